// The package smoke app: registers the HySparse ops from the package (no environment variable), runs
// a dense model and its HySparse conversion with KvCacheDecoder and checks that they generate the same
// greedy tokens (the conversion is asked for with a selection that covers every key, where the hybrid
// computes what the dense model computes). Exit 0 only when all of it holds.
using HySparse.Onnx;
using Microsoft.ML.OnnxRuntime;

if (args.Length != 2)
{
    Console.Error.WriteLine("usage: PackageSmoke <dense.onnx> <converted.onnx>");
    return 2;
}
if (Environment.GetEnvironmentVariable(HySparseNativeLibrary.PathEnvironmentVariable) is { Length: > 0 })
{
    Console.Error.WriteLine($"{HySparseNativeLibrary.PathEnvironmentVariable} is set: this smoke test must find the library on its own");
    return 1;
}

using var options = new SessionOptions();
options.RegisterHySparseOps();
options.RegisterHySparseOps();   // a second call must be a no-op, not ORT's "Domain already set"
Console.WriteLine($"native library: {HySparseNativeLibrary.Locate()}");

long[] prompt = [1, 17, 42, 9, 3, 25, 7, 44, 12, 5, 37, 31];   // the fixture's vocabulary is 50 tokens
long[] Generate(string path, SessionOptions? sessionOptions)
{
    using var session = sessionOptions is null ? new InferenceSession(path) : new InferenceSession(path, sessionOptions);
    using var decoder = new KvCacheDecoder(session);
    var tokens = decoder.GenerateGreedy(prompt, newTokens: 24);
    Console.WriteLine($"{Path.GetFileName(path)}: {string.Join(' ', tokens)} (KV cache {decoder.KvCacheBytes} bytes)");
    return tokens;
}

var dense = Generate(args[0], null);
var hybrid = Generate(args[1], options);
if (!dense.SequenceEqual(hybrid))
{
    Console.Error.WriteLine("FAIL: the converted model's greedy tokens differ from the dense model's");
    return 1;
}
Console.WriteLine("OK: same greedy tokens");
return 0;
