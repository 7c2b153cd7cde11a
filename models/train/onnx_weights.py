#!/usr/bin/python3
"""Reads a trained model's weights back out of its committed ONNX export, so training can resume from
the files the repository keeps (issue 11: "commit the checkpoints' ONNX exports, not optimizer state";
the optimizer state and the .npz/.pt checkpoints do not survive between sessions).

Neither exporter keeps parameter names: torch.onnx.export names folded, transposed matrices
`onnx::MatMul_2166`, and export_onnx.py's hybrid writer stores `layers.1.q_proj.fp16` transposed.
Instead of a name table that would drift from the exporters, the mapping is learned from the
exporters themselves: a model of the same config with random weights is exported to a scratch file,
and each of its initializers is matched, by value, to the parameter it holds (as is or transposed).
The initializer of the same name in the trained file is then that parameter's trained value.
Both files come from the same exporter code and PyTorch version, so the names line up; a
parameter that is not found, or found twice, is an error rather than a silent re-initialisation.

    from onnx_weights import model_from_onnx
    model, meta = model_from_onnx("models/fixtures/trained/dense.onnx")

Running this file checks the round trip (export -> import gives back the float16-rounded weights)
for every kind.
"""
import json
import os
import sys
import tempfile

import numpy as np
import onnx
import torch
from onnx import numpy_helper

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import export_onnx  # noqa: E402
from hysparse_lm import ByteLM, ModelConfig  # noqa: E402


def _arrays(graph_model):
    """Initializer name -> float32 array (float16 storage widened; integer constants skipped)."""
    out = {}
    for init in graph_model.graph.initializer:
        array = numpy_helper.to_array(init)
        if array.dtype in (np.float16, np.float32) and array.size > 1:
            out[init.name] = array.astype(np.float32)
    return out


def _export(model, directory):
    path = os.path.join(directory, "probe.onnx")
    with torch.no_grad():
        if model.c.kind == "dense":
            return export_onnx.export_dense(model, path)
        return export_onnx.export_hybrid(model, path, model.c.kind)


def _key(array):
    return array.shape, np.ascontiguousarray(array, dtype=np.float32).tobytes()


def name_map(config):
    """Initializer name -> (parameter name, transposed) for models of `config`, from a probe export."""
    torch.manual_seed(12345)
    probe = ByteLM(ModelConfig(**config)).eval()
    with torch.no_grad():
        for p in probe.parameters():   # distinct random values, representable in float16
            p.copy_(torch.randn_like(p).half().float())
    by_value = {}
    for name, p in probe.named_parameters():
        values = p.detach().numpy()
        by_value.setdefault(_key(values), []).append((name, False))
        if values.ndim == 2:
            by_value.setdefault(_key(values.T), []).append((name, True))
    with tempfile.TemporaryDirectory() as directory:
        exported = _arrays(_export(probe, directory))
    mapping = {}
    for init_name, array in exported.items():
        owners = by_value.get(_key(array), [])
        if len(owners) > 1:
            raise ValueError(f"initializer {init_name} matches several parameters: {owners}")
        if owners:
            mapping[init_name] = owners[0]
    found = {owner for owner, _ in mapping.values()}
    missing = [n for n, _ in probe.named_parameters() if n not in found]
    if missing:
        raise ValueError(f"the {config['kind']} export does not store these parameters as initializers: {missing}")
    return mapping


def model_from_onnx(path):
    """(ByteLM with the weights of the ONNX file at `path`, training record from its metadata)."""
    graph_model = onnx.load(path)
    meta = {p.key: p.value for p in graph_model.metadata_props}
    if "training.config" not in meta:
        raise ValueError(f"{path} has no training.config metadata: not an export_onnx.py model")
    config = json.loads(meta["training.config"])
    model = ByteLM(ModelConfig(**config))
    trained = _arrays(graph_model)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for init_name, (param_name, transposed) in name_map(config).items():
            if init_name not in trained:
                raise ValueError(f"{path} has no initializer {init_name} (holds {param_name}): "
                                 "exported by another exporter version?")
            array = trained[init_name].T if transposed else trained[init_name]
            if tuple(array.shape) != tuple(params[param_name].shape):
                raise ValueError(f"{path}: {init_name} has shape {array.shape}, {param_name} needs {tuple(params[param_name].shape)}")
            params[param_name].copy_(torch.from_numpy(np.ascontiguousarray(array)))
    record = {k[len("training."):]: v for k, v in meta.items() if k.startswith("training.")}
    return model, record


def load_model(path):
    """(ByteLM, training record) from a train_gpu.py `.npz` or an exported `.onnx` file."""
    if path.endswith(".npz"):
        checkpoint = export_onnx.load_checkpoint(path)
        model = ByteLM(ModelConfig(**checkpoint["config"]))
        model.load_state_dict(checkpoint["state"])
        return model, checkpoint
    return model_from_onnx(path)


def selfcheck():
    """Export a random model of each kind, read it back, compare with the weights as stored (float16 or float32)."""
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "config.json")) as f:
        fields = json.load(f)
    for kind in ("dense", "hysparse", "swa"):
        torch.manual_seed(7)
        model = ByteLM(ModelConfig(**dict(fields, kind=kind))).eval()
        with torch.no_grad():   # trained-like: no two parameters equal (the exporter shares equal initializers)
            for p in model.parameters():
                p.add_(0.01 * torch.randn_like(p))
        with tempfile.TemporaryDirectory() as directory:
            graph_model = _export(model, directory)
            graph_model.metadata_props.append(onnx.StringStringEntryProto(
                key="training.config", value=json.dumps(model.c.to_dict())))
            path = os.path.join(directory, "model.onnx")
            onnx.save(graph_model, path)
            back, _ = model_from_onnx(path)
        for (name, p), q in zip(model.named_parameters(), back.parameters()):
            # float16 storage for the large matrices, float32 for the small ones (torch export)
            if not (torch.equal(p.detach().half().float(), q.detach()) or torch.equal(p.detach(), q.detach())):
                raise AssertionError(f"{kind}: {name} did not survive the round trip")
        print(f"{kind}: {sum(1 for _ in model.parameters())} parameters round-trip through ONNX")


if __name__ == "__main__":
    selfcheck()
