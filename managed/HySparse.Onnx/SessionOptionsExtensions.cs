using System.Runtime.CompilerServices;
using Microsoft.ML.OnnxRuntime;

namespace HySparse.Onnx;

/// <summary>Registers the HySparse operators with an ONNX Runtime session.</summary>
public static class SessionOptionsExtensions
{
    // ORT refuses a second registration of the same domain on one SessionOptions ("Domain already
    // set"); remembering which options already hold it makes a repeated call a no-op. The table holds
    // the options weakly, so it never keeps them alive.
    private static readonly ConditionalWeakTable<SessionOptions, string> Registered = new();

    /// <summary>
    /// Registers the <c>com.hysparse</c> operators (CPU kernels, and CUDA kernels when the native library
    /// was built with them) in <paramref name="options"/>. Call before creating the
    /// <see cref="InferenceSession"/>. Calling it again on the same options does nothing.
    /// </summary>
    /// <param name="options">Session options to extend.</param>
    /// <param name="libraryPath">Explicit path of the native library; by default it is located with
    /// <see cref="HySparseNativeLibrary.Locate"/>.</param>
    /// <returns><paramref name="options"/>, for chaining.</returns>
    /// <exception cref="HySparseLibraryNotFoundException">The native library is not found.</exception>
    /// <exception cref="OnnxRuntimeException">ONNX Runtime refused the library (its message is kept).</exception>
    public static SessionOptions RegisterHySparseOps(this SessionOptions options, string? libraryPath = null)
    {
        ArgumentNullException.ThrowIfNull(options);
        lock (Registered)
        {
            if (Registered.TryGetValue(options, out _)) return options;
            var path = HySparseNativeLibrary.Locate(libraryPath);
            options.RegisterCustomOpLibrary(path);
            Registered.Add(options, path);
        }
        return options;
    }
}
