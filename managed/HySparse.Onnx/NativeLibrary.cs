using System.Reflection;
using System.Runtime.InteropServices;

namespace HySparse.Onnx;

/// <summary>
/// Finds the native custom-op library (<c>libhysparse_onnx.so</c>) on disk.
/// </summary>
/// <remarks>
/// ONNX Runtime loads custom-op libraries by path, so the usual .NET probing does not apply: this
/// class looks where a NuGet-deployed app, a <c>dotnet build</c> output and a development checkout put
/// the file, in a fixed order, and reports every place it looked when none holds it.
/// </remarks>
public static class HySparseNativeLibrary
{
    /// <summary>Environment variable that may name the library file explicitly.</summary>
    public const string PathEnvironmentVariable = "HYSPARSE_NATIVE_LIBRARY";

    /// <summary>File name of the library on this platform.</summary>
    public static string FileName =>
        OperatingSystem.IsWindows() ? "hysparse_onnx.dll"
        : OperatingSystem.IsMacOS() ? "libhysparse_onnx.dylib"
        : "libhysparse_onnx.so";

    /// <summary>The candidate paths, in the order they are tried.</summary>
    public static IReadOnlyList<string> SearchPaths()
    {
        var paths = new List<string>();
        var env = Environment.GetEnvironmentVariable(PathEnvironmentVariable);
        if (!string.IsNullOrEmpty(env)) paths.Add(env);

        var rid = RuntimeInformation.RuntimeIdentifier;
        var portableRid = $"{PlatformName()}-{RuntimeInformation.ProcessArchitecture.ToString().ToLowerInvariant()}";
        foreach (var dir in new[] { Path.GetDirectoryName(typeof(HySparseNativeLibrary).Assembly.Location), AppContext.BaseDirectory })
        {
            if (string.IsNullOrEmpty(dir)) continue;
            paths.Add(Path.Combine(dir, FileName));
            paths.Add(Path.Combine(dir, "runtimes", rid, "native", FileName));
            if (portableRid != rid) paths.Add(Path.Combine(dir, "runtimes", portableRid, "native", FileName));
        }
        return paths.Distinct(StringComparer.Ordinal).ToList();
    }

    /// <summary>
    /// Returns the full path of the library: <paramref name="explicitPath"/> when given (it must exist),
    /// else the first existing entry of <see cref="SearchPaths"/>.
    /// </summary>
    /// <exception cref="HySparseLibraryNotFoundException">No candidate exists.</exception>
    public static string Locate(string? explicitPath = null)
    {
        var candidates = explicitPath is null ? SearchPaths() : [explicitPath];
        foreach (var candidate in candidates)
        {
            if (File.Exists(candidate)) return Path.GetFullPath(candidate);
        }
        throw new HySparseLibraryNotFoundException(candidates);
    }

    private static string PlatformName() =>
        OperatingSystem.IsWindows() ? "win" : OperatingSystem.IsMacOS() ? "osx" : "linux";
}

/// <summary>Thrown when the native HySparse library is not at any of the searched paths.</summary>
public sealed class HySparseLibraryNotFoundException : FileNotFoundException
{
    /// <summary>Creates the exception listing every path that was tried.</summary>
    public HySparseLibraryNotFoundException(IReadOnlyList<string> searched)
        : base($"The HySparse native library ({HySparseNativeLibrary.FileName}) was not found. Searched:{Environment.NewLine}  " +
               string.Join(Environment.NewLine + "  ", searched) + Environment.NewLine +
               $"Build it with `dotnet build` (managed/HySparse.Onnx builds it) or set {HySparseNativeLibrary.PathEnvironmentVariable}.")
    {
        SearchedPaths = searched;
    }

    /// <summary>Every path that was tried, in order.</summary>
    public IReadOnlyList<string> SearchedPaths { get; }
}
