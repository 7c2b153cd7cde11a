using Microsoft.ML.OnnxRuntime;

namespace HySparse.Onnx;

/// <summary>Registers the HySparse operators with an ONNX Runtime session.</summary>
public static class SessionOptionsExtensions
{
    /// <summary>
    /// Registers the <c>com.hysparse</c> operators (CPU kernels, and CUDA kernels when the native library
    /// was built with them) in <paramref name="options"/>. Call before creating the
    /// <see cref="InferenceSession"/>.
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
        options.RegisterCustomOpLibrary(HySparseNativeLibrary.Locate(libraryPath));
        return options;
    }
}
