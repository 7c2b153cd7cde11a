using System.Reflection;
using System.Runtime.InteropServices;

namespace HySparse.Onnx;

/// <summary>
/// Finds the native custom-op library (<c>libhysparse_onnx.so</c>) on disk.
/// </summary>
/// <remarks>
/// ONNX Runtime loads custom-op libraries by path, so the usual .NET probing does not decide where the
/// file is: this class asks .NET's own native-library resolution first (it knows the app's deps.json,
/// the <c>runtimes/&lt;rid&gt;/native</c> folders of a NuGet-deployed app and the extraction folder of a
/// single-file app) and reads the loaded file's path back, then looks where a <c>dotnet build</c>
/// output and a development checkout put the file, and reports every place it looked when none holds it.
/// </remarks>
public static class HySparseNativeLibrary
{
    /// <summary>Environment variable that may name the library file explicitly.</summary>
    public const string PathEnvironmentVariable = "HYSPARSE_NATIVE_LIBRARY";

    /// <summary>The runtime identifiers the HySparse.Onnx package carries a native library for.</summary>
    public static IReadOnlyList<string> PackagedRuntimeIdentifiers { get; } = ["linux-x64"];

    /// <summary>File name of the library on this platform.</summary>
    public static string FileName =>
        OperatingSystem.IsWindows() ? "hysparse_onnx.dll"
        : OperatingSystem.IsMacOS() ? "libhysparse_onnx.dylib"
        : "libhysparse_onnx.so";

    /// <summary>The portable runtime identifier of this process (for example <c>linux-x64</c>).</summary>
    public static string PortableRuntimeIdentifier =>
        $"{PlatformName()}-{RuntimeInformation.ProcessArchitecture.ToString().ToLowerInvariant()}";

    /// <summary>The candidate paths on disk, in the order they are tried after .NET's own resolution.</summary>
    public static IReadOnlyList<string> SearchPaths()
    {
        var paths = new List<string>();
        var env = Environment.GetEnvironmentVariable(PathEnvironmentVariable);
        if (!string.IsNullOrEmpty(env)) paths.Add(env);

        var rid = RuntimeInformation.RuntimeIdentifier;
        var portableRid = PortableRuntimeIdentifier;
        // Assembly.Location is empty in a single-file app; AppContext.BaseDirectory is its folder.
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
    /// Returns the full path of the library: <paramref name="explicitPath"/> when given (it must exist);
    /// else <see cref="PathEnvironmentVariable"/> when set (it must exist); else the file .NET's
    /// native-library resolution loads for this assembly; else the first existing entry of
    /// <see cref="SearchPaths"/>.
    /// </summary>
    /// <exception cref="HySparseLibraryNotFoundException">No candidate exists (the message names this
    /// process's runtime identifier when the package has no library for it).</exception>
    public static string Locate(string? explicitPath = null)
    {
        // An explicit path, or the environment's: when it is wrong it must not be silently replaced by another copy.
        var given = explicitPath ?? (Environment.GetEnvironmentVariable(PathEnvironmentVariable) is { Length: > 0 } env ? env : null);
        if (given is not null)
            return File.Exists(given) ? Path.GetFullPath(given) : throw new HySparseLibraryNotFoundException([given]);
        if (ResolvedByRuntime() is { } resolved) return resolved;
        var candidates = SearchPaths();
        foreach (var candidate in candidates)
        {
            if (File.Exists(candidate)) return Path.GetFullPath(candidate);
        }
        throw new HySparseLibraryNotFoundException(candidates);
    }

    /// <summary>
    /// Lets .NET resolve the library as it would for a <c>DllImport</c> of this assembly (deps.json,
    /// runtimes/ folders, single-file extraction) and returns the path of the file it loaded.
    /// </summary>
    private static string? ResolvedByRuntime()
    {
        if (!OperatingSystem.IsLinux()) return null;
        if (!NativeLibrary.TryLoad("hysparse_onnx", typeof(HySparseNativeLibrary).Assembly, DllImportSearchPath.AssemblyDirectory, out var handle))
        {
            return null;
        }
        try
        {
            // Loading it here is harmless: ORT's dlopen of the same path returns this same mapping.
            if (!NativeLibrary.TryGetExport(handle, "RegisterCustomOps", out var symbol)) return null;
            return LoadedFile.PathOf(symbol) is { } path && File.Exists(path) ? Path.GetFullPath(path) : null;
        }
        finally
        {
            NativeLibrary.Free(handle);
        }
    }

    private static string PlatformName() =>
        OperatingSystem.IsWindows() ? "win" : OperatingSystem.IsMacOS() ? "osx" : "linux";
}

/// <summary>The file a loaded symbol comes from, through the C library's <c>dladdr</c>.</summary>
internal static partial class LoadedFile
{
    [StructLayout(LayoutKind.Sequential)]
    private struct DlInfo
    {
        public IntPtr FileName;
        public IntPtr BaseAddress;
        public IntPtr SymbolName;
        public IntPtr SymbolAddress;
    }

    // glibc 2.34+ has dladdr in libc itself; older ones only in libdl.
    [LibraryImport("libc.so.6", EntryPoint = "dladdr")]
    private static partial int DladdrLibc(IntPtr address, out DlInfo info);

    [LibraryImport("libdl.so.2", EntryPoint = "dladdr")]
    private static partial int DladdrLibdl(IntPtr address, out DlInfo info);

    public static string? PathOf(IntPtr symbol)
    {
        DlInfo info;
        int found;
        try { found = DladdrLibc(symbol, out info); }
        catch (EntryPointNotFoundException) { found = DladdrLibdl(symbol, out info); }
        return found != 0 && info.FileName != IntPtr.Zero ? Marshal.PtrToStringUTF8(info.FileName) : null;
    }
}

/// <summary>Thrown when the native HySparse library is not at any of the searched paths.</summary>
public sealed class HySparseLibraryNotFoundException : FileNotFoundException
{
    /// <summary>Creates the exception listing every path that was tried.</summary>
    public HySparseLibraryNotFoundException(IReadOnlyList<string> searched)
        : base(Describe(searched))
    {
        SearchedPaths = searched;
    }

    /// <summary>Every path that was tried, in order.</summary>
    public IReadOnlyList<string> SearchedPaths { get; }

    private static string Describe(IReadOnlyList<string> searched)
    {
        var rid = HySparseNativeLibrary.PortableRuntimeIdentifier;
        var head = HySparseNativeLibrary.PackagedRuntimeIdentifiers.Contains(rid)
            ? $"The HySparse native library ({HySparseNativeLibrary.FileName}) was not found."
            : $"The HySparse.Onnx package carries a native library for {string.Join(", ", HySparseNativeLibrary.PackagedRuntimeIdentifiers)} only; " +
              $"this process runs on {rid} ({RuntimeInformation.RuntimeIdentifier}). Build native/ from source for {rid} " +
              $"(cmake, see the repository's README) and pass its path or set {HySparseNativeLibrary.PathEnvironmentVariable}.";
        return head + " Searched:" + Environment.NewLine + "  " + string.Join(Environment.NewLine + "  ", searched) + Environment.NewLine +
               $"In a checkout, `dotnet build` (managed/HySparse.Onnx builds it); in an app, reference the HySparse.Onnx package; or set {HySparseNativeLibrary.PathEnvironmentVariable}.";
    }
}
