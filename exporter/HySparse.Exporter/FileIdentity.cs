using System.Runtime.InteropServices;

namespace HySparse.Exporter;

/// <summary>
/// Whether two paths name the same file: the same device and inode (Linux <c>statx</c>), so that a
/// symlinked folder (<c>alias/A.onnx</c> for <c>dir/A.onnx</c>), a symlink to the file or a hard link is
/// recognised. Comparing path strings is not enough: the converter must never write over its input.
/// </summary>
public static partial class FileIdentity
{
    /// <summary>
    /// True when <paramref name="a"/> and <paramref name="b"/> both exist and are the same file (or
    /// folder). Where <c>statx</c> is unavailable the full paths, with the links of the existing
    /// components resolved, are compared.
    /// </summary>
    public static bool Same(string a, string b)
    {
        if (!Path.Exists(a) || !Path.Exists(b)) return false;
        if (TryGet(a) is { } ia && TryGet(b) is { } ib) return ia == ib;
        return string.Equals(Resolve(a), Resolve(b), StringComparison.Ordinal);
    }

    /// <summary>(device major, device minor, inode) of <paramref name="path"/> after following links; null when unknown.</summary>
    internal static (uint Major, uint Minor, ulong Inode)? TryGet(string path)
    {
        if (!OperatingSystem.IsLinux()) return null;
        // struct statx is 256 bytes with a layout fixed by the kernel ABI on every architecture:
        // stx_ino at 32, stx_dev_major at 136, stx_dev_minor at 140.
        var buffer = new byte[256];
        try
        {
            if (Statx(AtFdCwd, path, 0, StatxIno, buffer) != 0) return null;
        }
        catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException)
        {
            return null;
        }
        var mask = BitConverter.ToUInt32(buffer, 0);
        if ((mask & StatxIno) == 0) return null;
        return (BitConverter.ToUInt32(buffer, 136), BitConverter.ToUInt32(buffer, 140), BitConverter.ToUInt64(buffer, 32));
    }

    /// <summary>The full path with every symbolic link among its existing components resolved.</summary>
    internal static string Resolve(string path)
    {
        var full = Path.GetFullPath(path);
        var root = Path.GetPathRoot(full)!;
        var resolved = root;
        foreach (var part in full[root.Length..].Split(Path.DirectorySeparatorChar, StringSplitOptions.RemoveEmptyEntries))
        {
            var next = Path.Combine(resolved, part);
            FileSystemInfo info = Directory.Exists(next) ? new DirectoryInfo(next) : new FileInfo(next);
            resolved = info.Exists && info.ResolveLinkTarget(returnFinalTarget: true) is { } target ? Path.GetFullPath(target.FullName) : next;
        }
        return resolved;
    }

    private const int AtFdCwd = -100;
    private const uint StatxIno = 0x100;

    // Source-generated marshalling (no runtime IL stubs: trimming- and AOT-safe), as for the native bindings.
    [LibraryImport("libc", EntryPoint = "statx", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int Statx(int dirfd, string path, int flags, uint mask, [Out] byte[] buffer);
}
