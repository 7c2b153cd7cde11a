namespace HySparse.Models.Graph;

/// <summary>
/// One dimension of a declared tensor type: a fixed size or a symbolic name (such as
/// <c>batch_size</c>) that ONNX Runtime binds at run time.
/// </summary>
public readonly record struct Dim
{
    private Dim(long? size, string? symbol)
    {
        Size = size;
        Symbol = symbol;
    }

    /// <summary>The fixed size, or null for a symbolic dimension.</summary>
    public long? Size { get; }

    /// <summary>The symbolic name, or null for a fixed dimension.</summary>
    public string? Symbol { get; }

    /// <summary>A fixed-size dimension.</summary>
    public static Dim Of(long size) =>
        size >= 0 ? new Dim(size, null) : throw new ArgumentOutOfRangeException(nameof(size), size, "a dimension is never negative");

    /// <summary>A symbolic dimension.</summary>
    public static Dim Named(string symbol) =>
        string.IsNullOrEmpty(symbol) ? throw new ArgumentException("a symbolic dimension needs a name", nameof(symbol)) : new Dim(null, symbol);

    /// <summary>Fixed size from an integer literal.</summary>
    public static implicit operator Dim(long size) => Of(size);

    /// <summary>Symbolic dimension from a string literal.</summary>
    public static implicit operator Dim(string symbol) => Named(symbol);

    /// <inheritdoc />
    public override string ToString() => Symbol ?? Size!.Value.ToString(System.Globalization.CultureInfo.InvariantCulture);
}
