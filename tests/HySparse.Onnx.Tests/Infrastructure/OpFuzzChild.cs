using System.Diagnostics;
using System.Text.Json;
using System.Text.RegularExpressions;

namespace HySparse.Onnx.Tests.Infrastructure;

/// <summary>
/// The op fuzzer's child processes (issue 14): this test assembly run as a program
/// (<c>dotnet exec HySparse.Onnx.Tests.dll op-fuzz-child FIRST COUNT CASEFILE</c>, see <see cref="TestAssemblyEntry"/>)
/// runs a batch of cases and prints each case's outcome as it ends; a child that dies (a crash, or its 60 s
/// watchdog for a hanging case) takes only its batch down, and the parent learns the case from the file.
/// </summary>
internal static partial class OpFuzzChild
{
    /// <summary>The first argument that makes the test assembly a fuzz child.</summary>
    public const string Verb = "op-fuzz-child";

    /// <summary>What a batch reported, case by case as it went (so a child that dies still reports the
    /// cases before it died): outcome counts and failures (exceptions other than ORT's).</summary>
    public sealed record Report(Dictionary<string, int> Outcomes, List<string> Failures);

    /// <summary>How a child ended: what it reported, whether it finished its batch, exit code, standard error.</summary>
    public sealed record Result(Report Report, bool Finished, int ExitCode, string StandardError);

    private const string CasePrefix = "OPFUZZ-CASE ", FailurePrefix = "OPFUZZ-FAIL ", DonePrefix = "OPFUZZ-DONE";

    /// <summary>Seconds a case may run before its child ends itself as hanging (default 60).</summary>
    public const string CaseSecondsVariable = "HYSPARSE_FUZZ_CASE_SECONDS";

    /// <summary>
    /// Faults the harness's own test plants in a child (<c>crash:SEED,hang:SEED</c>): proof that a crash
    /// or a hang is counted with its seed and the campaign goes on. Unset in real campaigns.
    /// </summary>
    public const string SimulateVariable = "HYSPARSE_FUZZ_SIMULATE";

    /// <summary>
    /// Runs <paramref name="cases"/> cases from <paramref name="firstSeed"/> in child processes of
    /// <paramref name="casesPerChild"/> cases. A child that dies is counted as a crash (or a hang, when
    /// its watchdog or the backstop ended it) with the case it was running, and the next child starts at
    /// the seed after that case.
    /// </summary>
    public static (Dictionary<string, int> Outcomes, List<string> Failures, int Children) Campaign(
        int firstSeed, int cases, int casesPerChild, IReadOnlyDictionary<string, string>? environment = null)
    {
        var end = (long)firstSeed + cases;
        var caseFile = Path.Combine(Path.GetTempPath(), $"hysparse-op-fuzz-{Environment.ProcessId}-{Guid.NewGuid():N}.case");
        var outcomes = new Dictionary<string, int>();
        var failures = new List<string>();
        int children = 0;
        try
        {
            for (long seed = firstSeed; seed < end;)
            {
                var count = (int)Math.Min(casesPerChild, end - seed);
                File.Delete(caseFile);
                var child = Start((int)seed, count, caseFile, environment);
                children++;
                foreach (var (outcome, n) in child.Report.Outcomes) outcomes[outcome] = outcomes.GetValueOrDefault(outcome) + n;
                failures.AddRange(child.Report.Failures);
                if (child.Finished)
                {
                    seed += count;
                    continue;
                }
                var running = File.Exists(caseFile) ? File.ReadAllText(caseFile) : "(before its first case)";
                var kind = child.StandardError.Contains("op fuzz case hangs", StringComparison.Ordinal) ? "hang" : "crash";
                outcomes[kind] = outcomes.GetValueOrDefault(kind) + 1;
                var lastLine = child.StandardError.Trim().Split('\n').LastOrDefault(l => l.Trim().Length > 0)?.Trim() ?? "";
                failures.Add($"{kind} (exit {child.ExitCode}) at {running}: {lastLine}");
                seed = SeedOf(running) is { } crashed && crashed >= seed ? crashed + 1 : seed + count;
            }
        }
        finally
        {
            File.Delete(caseFile);
        }
        return (outcomes, failures, children);
    }

    /// <summary>Plants the fault <see cref="SimulateVariable"/> names for <paramref name="seed"/>, if any.</summary>
    public static void SimulateFault(long seed)
    {
        if (Environment.GetEnvironmentVariable(SimulateVariable) is not { Length: > 0 } plan) return;
        foreach (var item in plan.Split(','))
        {
            var parts = item.Split(':');
            if (parts.Length != 2 || parts[1] != seed.ToString(CultureInfo.InvariantCulture)) continue;
            if (parts[0] == "crash") Environment.FailFast($"simulated crash at seed {seed}");
            if (parts[0] == "hang") Thread.Sleep(Timeout.Infinite);
        }
    }

    /// <summary>Runs one batch in a child process and waits for it.</summary>
    public static Result Start(int firstSeed, int count, string caseFile, IReadOnlyDictionary<string, string>? environment = null)
    {
        var start = new ProcessStartInfo(Environment.GetEnvironmentVariable("DOTNET_HOST_PATH") is { Length: > 0 } host ? host : "dotnet")
        {
            UseShellExecute = false,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
        };
        foreach (var (name, value) in environment ?? new Dictionary<string, string>()) start.Environment[name] = value;
        foreach (var arg in new[] { "exec", typeof(OpFuzzChild).Assembly.Location, Verb, firstSeed.ToString(CultureInfo.InvariantCulture),
                                    count.ToString(CultureInfo.InvariantCulture), caseFile })
            start.ArgumentList.Add(arg);
        using var child = Process.Start(start) ?? throw new InvalidOperationException("could not start an op fuzz child");
        var stdout = child.StandardOutput.ReadToEndAsync();
        var stderr = child.StandardError.ReadToEndAsync();
        // The child's watchdog ends it 60 s into a hanging case; this is the backstop should that fail too.
        if (!child.WaitForExit(TimeSpan.FromSeconds(120 + count)))
        {
            child.Kill(entireProcessTree: true);
            child.WaitForExit();
            return new Result(Parse(stdout.Result), false, -1, "op fuzz case hangs (the child did not end; killed)");
        }
        var report = Parse(stdout.Result);
        var finished = child.ExitCode == 0 && stdout.Result.Contains(DonePrefix, StringComparison.Ordinal);
        return new Result(report, finished, child.ExitCode, stderr.Result);
    }

    private static Report Parse(string stdout)
    {
        var report = new Report([], []);
        foreach (var line in stdout.Split('\n'))
        {
            if (line.StartsWith(CasePrefix, StringComparison.Ordinal))
            {
                var outcome = line[CasePrefix.Length..].TrimEnd('\r');
                report.Outcomes[outcome] = report.Outcomes.GetValueOrDefault(outcome) + 1;
            }
            else if (line.StartsWith(FailurePrefix, StringComparison.Ordinal))
            {
                report.Failures.Add(JsonSerializer.Deserialize<string>(line[FailurePrefix.Length..])!);
            }
        }
        return report;
    }

    /// <summary>The child's side: runs the batch, printing each case's outcome (and failure) as it ends.</summary>
    public static int Run(string[] args)
    {
        int first = int.Parse(args[1], CultureInfo.InvariantCulture), count = int.Parse(args[2], CultureInfo.InvariantCulture);
        OpFuzzTests.RunCases(first, count, args[3], (outcome, failure) =>
        {
            if (failure is not null) Console.WriteLine(FailurePrefix + JsonSerializer.Serialize(failure));
            Console.WriteLine(CasePrefix + outcome);
        });
        Console.WriteLine(DonePrefix);
        return 0;
    }

    /// <summary>The seed in a case description ("seed N: ..."), or null.</summary>
    public static long? SeedOf(string description) =>
        SeedPattern().Match(description) is { Success: true } m ? long.Parse(m.Groups[1].Value, CultureInfo.InvariantCulture) : null;

    [GeneratedRegex(@"^seed (\d+):")]
    private static partial Regex SeedPattern();
}

/// <summary>
/// The test assembly's entry point. Test runners never call it; it exists so the op fuzzer can run this
/// assembly as its child process (<see cref="OpFuzzChild"/>).
/// </summary>
internal static class TestAssemblyEntry
{
    private static int Main(string[] args) =>
        args.Length == 4 && args[0] == OpFuzzChild.Verb ? OpFuzzChild.Run(args)
            : throw new ArgumentException($"usage: {OpFuzzChild.Verb} FIRST_SEED COUNT CASE_FILE (this assembly is a test assembly)");
}
