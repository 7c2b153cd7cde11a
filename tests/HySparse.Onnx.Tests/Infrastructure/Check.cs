namespace HySparse.Onnx.Tests.Infrastructure;

/// <summary>Element-wise comparisons that report the worst element (and fail on any NaN, i.e. an unwritten poisoned output).</summary>
public static class Check
{
    public static void Close(double[] expected, double[] actual, double absTol, double relTol, string what)
    {
        Assert.AreEqual(expected.Length, actual.Length, $"{what}: element count");
        var worst = -1;
        var worstExcess = 0.0;
        for (var i = 0; i < expected.Length; i++)
        {
            if (double.IsNaN(actual[i]))
                Assert.Fail($"{what}: element {i} is NaN (never written; expected {expected[i]})");
            var excess = Math.Abs(expected[i] - actual[i]) - (absTol + relTol * Math.Abs(expected[i]));
            if (excess > worstExcess) (worst, worstExcess) = (i, excess);
        }
        if (worst >= 0)
            Assert.Fail($"{what}: element {worst} is {actual[worst]}, expected {expected[worst]} (|diff| {Math.Abs(expected[worst] - actual[worst]):E3}, tolerance {absTol:E1} + {relTol:E1}·|x|)");
    }

    public static double MaxAbsDiff(double[] a, double[] b) =>
        a.Zip(b, (x, y) => Math.Abs(x - y)).DefaultIfEmpty(0).Max();

    public static void Equal(int[] expected, int[] actual, string what)
    {
        Assert.AreEqual(expected.Length, actual.Length, $"{what}: element count");
        for (var i = 0; i < expected.Length; i++)
            if (expected[i] != actual[i]) Assert.Fail($"{what}: element {i} is {actual[i]}, expected {expected[i]}");
    }
}
