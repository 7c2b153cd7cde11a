namespace HySparse.Exporter.Tests;

/// <summary>ONNX Runtime sessions over in-memory models, quiet below errors, with or without the HySparse ops.</summary>
internal static class TestSessions
{
    public static InferenceSession Open(byte[] model, bool registerOps = true)
    {
        using var options = new SessionOptions { LogSeverityLevel = OrtLoggingLevel.ORT_LOGGING_LEVEL_ERROR };
        if (registerOps) options.RegisterHySparseOps();
        return new InferenceSession(model, options);
    }
}
