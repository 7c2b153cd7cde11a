extern "C" int RegisterCustomOps() { return 0; }
