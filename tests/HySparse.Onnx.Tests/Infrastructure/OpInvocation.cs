namespace HySparse.Onnx.Tests.Infrastructure;

/// <summary>
/// One call of a single-node model: the op, its inputs by their contract names (absent ones are simply
/// not in <see cref="Inputs"/>), the outputs wanted and the attributes. Tests may edit any part before
/// <see cref="Run"/>, which is how the malformed-input tests break exactly one thing.
/// </summary>
public sealed class OpInvocation(string opType, string domain, IReadOnlyList<string> inputNames, IReadOnlyList<string> outputNames)
{
    public string OpType { get; } = opType;
    public string Domain { get; } = domain;
    public string NodeName { get; set; } = "node0";
    public IReadOnlyList<string> InputNames { get; } = inputNames;
    public IReadOnlyList<string> OutputNames { get; } = outputNames;
    public Dictionary<string, TestTensor> Inputs { get; } = new();
    /// <summary>Wanted outputs by name; a null shape means ORT allocates it (no poisoning, no shape check).</summary>
    public Dictionary<string, OutputRequest> Outputs { get; } = new();
    public Dictionary<string, object> Attributes { get; } = new();

    public byte[] BuildModel() => OnnxModelFactory.SingleNode(
        OpType, Domain,
        InputNames.Select(n => Inputs.TryGetValue(n, out var t) ? new TensorSpec(n, t.Type, t.Shape.Length) : null).ToList(),
        OutputNames.Select(n => Outputs.TryGetValue(n, out var o) ? new TensorSpec(n, o.Type, null) : null).ToList(),
        Attributes, NodeName);

    /// <summary>Runs the node; the HySparse library is registered for its own ops only, so ORT's built-in ops are tested without it.</summary>
    public Dictionary<string, TestTensor> Run() =>
        OrtRunner.Run(BuildModel(), Inputs, OutputNames.Where(Outputs.ContainsKey).Select(n => Outputs[n]).ToList(),
                      registerHySparseOps: Domain == HySparseOps.Domain);

    /// <summary>Forgets the expected output shapes, for calls that are meant to fail before allocating.</summary>
    public OpInvocation WithoutOutputShapes()
    {
        foreach (var name in Outputs.Keys.ToList()) Outputs[name] = Outputs[name] with { Shape = null };
        return this;
    }
}
