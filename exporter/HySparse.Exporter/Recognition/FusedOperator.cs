using System.Globalization;
using HySparse.Graph;
using Onnx;
using DataType = Onnx.TensorProto.Types.DataType;

namespace HySparse.Exporter.Recognition;

/// <summary>
/// Checks shared by the fused-operator patterns: inputs by position, attributes against what the
/// converter can express, and the cache geometry from the past cache's declaration. Each check
/// abandons the match with a <see cref="PatternMismatch"/> naming the node and the reason.
/// </summary>
internal sealed class FusedOperator(GraphIndex graph, NodeProto node)
{
    /// <summary>The operator's name as users know it, e.g. <c>com.microsoft.GroupQueryAttention</c>.</summary>
    public string OpName => $"{node.Domain}.{node.OpType}";

    /// <summary>Input <paramref name="index"/>, or null when it is omitted (absent or an empty name).</summary>
    public string? Input(int index) => index < node.Input.Count && node.Input[index].Length > 0 ? node.Input[index] : null;

    /// <summary>Output <paramref name="index"/>, or null when it is not requested.</summary>
    public string? Output(int index) => index < node.Output.Count && node.Output[index].Length > 0 ? node.Output[index] : null;

    /// <summary>Input <paramref name="index"/>, which the conversion needs.</summary>
    public string RequireInput(int index, string name, string why) =>
        Input(index) ?? throw Refuse($"input '{name}' is absent: {why}");

    /// <summary>Refuses the node when any of <paramref name="inputs"/> (index, name) is given.</summary>
    public void RequireAbsentInputs(params (int Index, string Name, string Why)[] inputs)
    {
        foreach (var (index, name, why) in inputs)
            if (Input(index) is not null) throw Refuse($"input '{name}' is given: {why}");
        for (var i = inputs.Length == 0 ? 0 : inputs.Max(x => x.Index) + 1; i < node.Input.Count; i++)
            if (node.Input[i].Length > 0) throw Refuse($"input {i} ('{node.Input[i]}') is one the converter does not know");
    }

    /// <summary>
    /// Every attribute must be one of <paramref name="understood"/>, whose check returns null when the
    /// value is convertible or a reason when it is not; an attribute the converter has never heard of
    /// is refused too, since it could change what the operator computes.
    /// </summary>
    public void CheckAttributes(IReadOnlyDictionary<string, Func<AttributeProto, string?>> understood)
    {
        foreach (var attribute in node.Attribute)
        {
            if (!understood.TryGetValue(attribute.Name, out var check))
                throw Refuse($"attribute '{attribute.Name}' is not one the converter knows how to carry over");
            if (check(attribute) is { } reason) throw Refuse(reason);
        }
    }

    /// <summary>A required positive integer attribute.</summary>
    public int PositiveInt(string name)
    {
        var attribute = node.Attribute.FirstOrDefault(a => a.Name == name) ?? throw Refuse($"required attribute '{name}' is missing");
        return attribute.I is >= 1 and <= int.MaxValue ? (int)attribute.I : throw Refuse($"attribute '{name}' is {attribute.I}; it must be a positive count");
    }

    /// <summary>
    /// The logit scale: attribute <c>scale</c>, where 0 or absent means 1/√D as for the HySparse ops.
    /// </summary>
    public float Scale(int headSize)
    {
        var scale = node.Attribute.FirstOrDefault(a => a.Name == "scale")?.F ?? 0f;
        return scale == 0f ? 1f / MathF.Sqrt(headSize) : scale;
    }

    /// <summary>
    /// H_kv, D and the element type from a past cache graph input declared [B,H_kv,P,D] (rank 4) or
    /// [2,B,H_kv,P,D] (rank 5: keys and values combined, as <c>com.microsoft.Attention</c> takes them)
    /// with fixed H_kv and D, of a type the HySparse CPU kernels take.
    /// </summary>
    private (int KvHeads, int HeadSize, DataType Type) PastCache(string past, int rank)
    {
        if (!graph.IsGraphInput(past))
            throw Refuse($"past cache '{past}' is not a graph input; only caches fed from outside the model can become the ops' caches");
        var type = graph.GraphInput(past)!.Type?.TensorType;
        var dims = type?.Shape?.Dim;
        var layout = rank == 4 ? "[B, H_kv, length, D]" : "[2, B, H, length, D]";
        if (dims is null || dims.Count != rank || dims[rank - 3].DimValue < 1 || dims[rank - 1].DimValue < 1
            || (rank == 5 && dims[0].DimValue is not (0 or 2)))
            throw Refuse($"past cache '{past}' does not declare a {rank}-D shape {layout} with fixed head count and head size");
        var elementType = (DataType)type!.ElemType;
        if (elementType is not (DataType.Float or DataType.Float16))
            throw Refuse($"past cache '{past}' holds {elementType.ToString().ToLowerInvariant()}; the HySparse CPU operators take float32 or float16 caches");
        return (checked((int)dims[rank - 3].DimValue), checked((int)dims[rank - 1].DimValue), elementType);
    }

    /// <summary>
    /// Geometry of the past caches <paramref name="pastKey"/> / <paramref name="pastValue"/> (see
    /// <see cref="PastCache"/>), which must agree with each other and hold <paramref name="kvHeads"/> heads
    /// as attribute <paramref name="headsAttribute"/> says.
    /// </summary>
    public (int HeadSize, DataType Type) PastCaches(string pastKey, string pastValue, int kvHeads, string headsAttribute)
    {
        var (heads, headSize, elementType) = PastCache(pastKey, 4);
        if (PastCache(pastValue, 4) != (heads, headSize, elementType))
            throw Refuse($"past_key '{pastKey}' and past_value '{pastValue}' are declared with different geometry");
        CheckHeads(pastKey, heads, kvHeads, headsAttribute);
        return (headSize, elementType);
    }

    /// <summary>Geometry of a combined past cache [2,B,H,P,D] holding <paramref name="heads"/> heads as attribute <paramref name="headsAttribute"/> says.</summary>
    public (int HeadSize, DataType Type) CombinedPastCache(string past, int heads, string headsAttribute)
    {
        var (declared, headSize, elementType) = PastCache(past, 5);
        CheckHeads(past, declared, heads, headsAttribute);
        return (headSize, elementType);
    }

    private void CheckHeads(string past, int declared, int heads, string headsAttribute)
    {
        if (declared != heads)
            throw Refuse($"{headsAttribute} is {heads} but past cache '{past}' declares {declared} heads");
    }

    /// <summary>
    /// Refuses the node unless attribute <c>unidirectional</c> is given (its default, 0, is bidirectional);
    /// <see cref="Unidirectional"/> checks its value.
    /// </summary>
    public void RequireUnidirectional()
    {
        if (!node.Attribute.Any(a => a.Name == "unidirectional"))
            throw Refuse("unidirectional is 0 (absent): the layer is not causal, and nothing else in it says which keys a token may see");
    }

    /// <summary>
    /// The <c>attention_mask</c> graph input [B, P+S] behind <paramref name="mask"/> (the op's int32 input
    /// <paramref name="inputName"/>): that input itself when it is int32, or its Cast to int32 from
    /// int64, float or float16 (as ONNX Runtime's fusions and exporters write it); a 0/1 padding mask,
    /// the form the HySparse ops take (in int64: the rewrite casts another type once, see
    /// <see cref="AttentionLayer.AttentionMask"/>).
    /// </summary>
    public string PaddingMask(string mask, string inputName)
    {
        var source = graph.Producer(mask) is { OpType: "Cast", Domain: "" } cast ? cast.Input[0] : mask;
        if (!graph.IsGraphInput(source)
            || graph.GraphInput(source)!.Type?.TensorType is not { Shape.Dim.Count: 2 } type
            || !MaskTypes.Contains((DataType)type.ElemType)
            || (source == mask && (DataType)type.ElemType != DataType.Int32))
            throw Refuse($"{inputName} '{mask}' is not a [batch, total length] graph input (int32, or int64/float/float16 cast to int32); " +
                "other mask forms (key lengths, 3-D or 4-D masks, computed masks) are not converted");
        return source;
    }

    /// <summary>Element types of a 0/1 padding mask graph input that a cast carries over exactly.</summary>
    private static readonly DataType[] MaskTypes = [DataType.Int64, DataType.Int32, DataType.Float, DataType.Float16];

    /// <summary>The attention output and the present caches must all be produced: the ops always write them.</summary>
    public (string Output, string PresentKey, string PresentValue) RequiredOutputs(int firstUnsupported, string unsupportedName)
    {
        if (Output(firstUnsupported) is not null) throw Refuse($"output '{unsupportedName}' is requested; the HySparse ops do not produce it");
        if (Output(1) is not { } presentKey || Output(2) is not { } presentValue)
            throw Refuse("present_key / present_value are not produced; the converter needs the layer's KV cache outputs");
        return (node.Output[0], presentKey, presentValue);
    }

    /// <summary>A mismatch at this node, to throw.</summary>
    public PatternMismatch Refuse(string reason) => new(node, $"{OpName}: {reason}");

    /// <summary>A check accepting only <paramref name="allowed"/> integer values.</summary>
    public static Func<AttributeProto, string?> IntIn(string why, params long[] allowed) =>
        a => allowed.Contains(a.I) ? null : $"attribute '{a.Name}' = {a.I}: {why}";

    /// <summary>A check accepting only <paramref name="allowed"/> float values.</summary>
    public static Func<AttributeProto, string?> FloatIs(float allowed, string why) =>
        a => a.F == allowed ? null : $"attribute '{a.Name}' = {a.F.ToString(CultureInfo.InvariantCulture)}: {why}";

    /// <summary>A masked key's logit is offset by this or less so its weight vanishes in float32 next to a real key's.</summary>
    private const float MostPermissiveMaskValue = -100f;

    /// <summary>
    /// Attribute <c>unidirectional</c>: only 1 (causal) has a HySparse equivalent; see also
    /// <see cref="RequireUnidirectional"/> for the attribute's absence.
    /// </summary>
    public static Func<AttributeProto, string?> Unidirectional { get; } =
        IntIn("without unidirectional=1 the layer is not causal, and nothing else in it says which keys a token may see", 1);

    /// <summary>
    /// Attribute <c>mask_filter_value</c>, the logit offset of a masked key: the HySparse ops drop masked
    /// keys exactly, which is the same in float32 only while the offset is far below any logit.
    /// </summary>
    public static string? MaskFilterValue(AttributeProto attribute) => attribute.F <= MostPermissiveMaskValue ? null
        : $"attribute 'mask_filter_value' = {attribute.F.ToString(CultureInfo.InvariantCulture)}: masked keys would keep a weight the HySparse ops (which drop them exactly) do not reproduce";

    /// <summary>A check accepting any value (an attribute carried over or read elsewhere).</summary>
    public static string? Any(AttributeProto attribute) => null;
}
