namespace HySparse.Onnx.Tests.Infrastructure;

/// <summary>Conversions between the BNSH layout the references use and the layouts the ops accept.</summary>
public static class Layouts
{
    /// <summary>[B, H, S, D] → [B, S, H·D].</summary>
    public static double[] BnshToBsnh(double[] x, int batch, int heads, int seq, int dim) => Transpose(x, batch, heads, seq, dim, toBsnh: true);

    /// <summary>[B, S, H·D] → [B, H, S, D].</summary>
    public static double[] BsnhToBnsh(double[] x, int batch, int heads, int seq, int dim) => Transpose(x, batch, heads, seq, dim, toBsnh: false);

    private static double[] Transpose(double[] x, int batch, int heads, int seq, int dim, bool toBsnh)
    {
        var y = new double[x.Length];
        for (var b = 0; b < batch; b++)
        for (var h = 0; h < heads; h++)
        for (var s = 0; s < seq; s++)
        {
            long bnsh = (((long)b * heads + h) * seq + s) * dim, bsnh = (((long)b * seq + s) * heads + h) * dim;
            if (toBsnh) Array.Copy(x, bnsh, y, bsnh, dim);
            else Array.Copy(x, bsnh, y, bnsh, dim);
        }
        return y;
    }

    /// <summary>Concatenates two BNSH caches along the sequence axis.</summary>
    public static double[] ConcatSeq(double[] first, int firstLen, double[] second, int secondLen, int batch, int heads, int dim)
    {
        var total = firstLen + secondLen;
        var y = new double[(long)batch * heads * total * dim];
        for (var bh = 0; bh < batch * heads; bh++)
        {
            Array.Copy(first, (long)bh * firstLen * dim, y, (long)bh * total * dim, (long)firstLen * dim);
            Array.Copy(second, (long)bh * secondLen * dim, y, ((long)bh * total + firstLen) * dim, (long)secondLen * dim);
        }
        return y;
    }

    /// <summary>Positions [start, start + length) of a BNSH tensor with <paramref name="seq"/> positions.</summary>
    public static double[] SliceSeq(double[] x, int seq, int start, int length, int batch, int heads, int dim)
    {
        var y = new double[(long)batch * heads * length * dim];
        for (var bh = 0; bh < batch * heads; bh++)
            Array.Copy(x, ((long)bh * seq + start) * dim, y, (long)bh * length * dim, (long)length * dim);
        return y;
    }

    /// <summary>Columns [start, start + length) of a row-major [rows, cols] matrix (masks).</summary>
    public static long[] SliceColumns(long[] x, int rows, int cols, int start, int length)
    {
        var y = new long[rows * length];
        for (var r = 0; r < rows; r++) Array.Copy(x, r * cols + start, y, r * length, length);
        return y;
    }

    /// <summary>Rows [start, start + length) of axis 2 of a [A, B, seq, inner] tensor (per-token outputs).</summary>
    public static double[] SliceAxis2(double[] x, int outer, int seq, int inner, int start, int length)
    {
        var y = new double[(long)outer * length * inner];
        for (var o = 0; o < outer; o++)
            Array.Copy(x, ((long)o * seq + start) * inner, y, (long)o * length * inner, (long)length * inner);
        return y;
    }
}
