"""ONNX export (adds.export, adds export): onnxruntime matches PyTorch within 1e-4 in fp32 on tiny random towers, with
dynamic batch and label axes; the traceable pyramid equals PyramidForwarding; the CLI writes the file, its sidecar
and label embeddings, and answers a missing onnxruntime with one line and exit code 2."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from adds.cli import main
from adds.decoder import DecoderConfig
from adds.export import ExportConfig, ExportDependencyError, _PyramidCrops, export_onnx, require_onnx, resize_matrix
from adds.model import ADDS, ADDSConfig
from adds.pyramid import PyramidConfig, PyramidForwarding
from adds.tagger.baseline import CLIPBaseline, CLIPBaselineConfig

onnx = pytest.importorskip("onnx")
onnxruntime = pytest.importorskip("onnxruntime")

TINY_HEAD = DecoderConfig(num_layers=2, num_heads=2, ffn_dim=64, dropout=0.0)


def _model(towers, **changes) -> ADDS:
    decoder = changes.pop("decoder", TINY_HEAD)
    model = ADDS(ADDSConfig(towers=towers.config, decoder=decoder, **changes), towers=towers).eval()
    for param in model.trainable_parameters():  # not the initial zero bias / identity-like norms
        param.data.add_(0.05 * torch.randn_like(param))
    return model


def _session(path):
    return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("in_size,out_size", [(64, 32), (100, 32), (20, 32), (128, 64), (48, 48)])
@pytest.mark.parametrize("antialias", [True, False])
def test_resize_matrix_is_the_2d_resize(in_size, out_size, antialias):
    images = torch.rand(2, 3, in_size, in_size)
    expected = F.interpolate(images, size=(out_size, out_size), mode="bicubic", antialias=antialias,
                             align_corners=False)
    matrix = resize_matrix(in_size, out_size, antialias)  # (out, in)
    assert matrix.shape == (out_size, in_size)
    torch.testing.assert_close(matrix @ images @ matrix.t(), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("size,levels", [(32, None), (64, None), (100, None), (128, (0, 2)), (20, None)])
def test_traceable_crops_equal_pyramid_forwarding(tiny_towers, size, levels):
    pyramid = PyramidForwarding(32, tiny_towers.mean, tiny_towers.std, PyramidConfig(levels=levels)).eval()
    images = torch.rand(3, 3, size, size)
    expected, n = pyramid.crops(images)
    crops = _PyramidCrops(pyramid, size)
    assert crops.num_crops == n
    torch.testing.assert_close(crops(images), expected, atol=2e-6, rtol=0)


@pytest.fixture(scope="module")
def toy_towers():
    """The toy world's CLIP: two attention heads per layer, so open_clip takes nn.MultiheadAttention's fused
    inference fast path (which the exporter cannot trace; export_onnx turns it off while tracing)."""
    from adds.toyworld.toyclip import load_toy_towers

    return load_toy_towers(0)


@pytest.mark.parametrize("variant", ["dm", "dm-pyramid", "ml", "unaligned-token-norm", "toy-fastpath"])
def test_onnx_matches_pytorch_with_dynamic_batch_and_labels(tiny_towers, tiny_towers_unaligned, toy_towers, tmp_path,
                                                            variant):
    towers = {"unaligned-token-norm": tiny_towers_unaligned, "toy-fastpath": toy_towers}.get(variant, tiny_towers)
    changes = {"token_norm": 2.0} if variant.startswith("unaligned") else {}
    if variant == "ml":
        changes["decoder"] = DecoderConfig(kind="ml", num_layers=2, num_heads=2, ffn_dim=64)
    model = _model(towers, **changes)
    size = 64 if variant == "dm-pyramid" else 32
    result = export_onnx(model, tmp_path / "m.onnx", ExportConfig(input_size=size))
    assert result.max_abs_diff is not None and result.max_abs_diff <= 1e-4
    assert result.crops == (5 if size == 64 else 1)

    # Independently of export_onnx's own check: sizes it never tried, against the model's public eager API.
    session = _session(result.path)
    for batch, k in [(2, 11), (5, 2)]:
        images = torch.rand(batch, 3, size, size)
        labels = F.normalize(torch.randn(k, towers.embed_dim), dim=-1)
        with torch.no_grad():
            expected = model(images, labels)  # (B, k): ADDS.forward, the blocked inference path
        logits, scores = session.run(None, {"images": images.numpy(), "label_embeddings": labels.numpy()})
        assert logits.shape == (batch, k)
        assert np.abs(logits - expected.numpy()).max() <= 1e-4
        np.testing.assert_allclose(scores, 1 / (1 + np.exp(-logits)), atol=1e-6)

    graph = onnx.load(str(result.path)).graph
    dims = {value.name: [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim] for value in graph.input}
    assert dims == {"images": ["batch", 3, size, size], "label_embeddings": ["labels", towers.embed_dim]}
    assert torch.backends.mha.get_fastpath_enabled()  # restored after the export
    meta = json.loads(result.metadata_path.read_text())
    assert meta["kind"] == "head" and meta["input_size"] == size and meta["crops"] == result.crops
    assert meta["templates"] == list(model.config.templates)


def test_labels_interact_through_the_dm_decoder_in_the_exported_graph(tiny_towers, tmp_path):
    """With two DM layers a label's logit depends on the other labels (Eq. 5's MHA2): the graph keeps that."""
    model = _model(tiny_towers)
    path = export_onnx(model, tmp_path / "m.onnx", ExportConfig(verify=False)).path
    session = _session(path)
    images = torch.rand(1, 3, 32, 32).numpy()
    labels = F.normalize(torch.randn(6, 32), dim=-1).numpy()
    full = session.run(["logits"], {"images": images, "label_embeddings": labels})[0]
    part = session.run(["logits"], {"images": images, "label_embeddings": labels[:3]})[0]
    assert np.abs(full[:, :3] - part).max() > 1e-6


@pytest.mark.parametrize("pooling, reference, size, crops", [("max", "blank", 64, 5), ("view", "image", 48, 1)])
def test_baseline_export_matches_pytorch(tiny_towers, tmp_path, pooling, reference, size, crops):
    baseline = CLIPBaseline(tiny_towers, CLIPBaselineConfig(pooling=pooling, reference=reference)).eval()
    result = export_onnx(baseline, tmp_path / "b.onnx", ExportConfig())  # default size: 2S for levels 0,1, else S
    assert result.kind == "baseline" and result.crops == crops
    assert result.levels == ((0, 1) if pooling == "max" else (0,))
    assert result.max_abs_diff <= 1e-4
    meta = json.loads(result.metadata_path.read_text())
    assert meta["baseline"] == {"pooling": pooling, "reference": reference}
    result = export_onnx(baseline, tmp_path / "b.onnx", ExportConfig(input_size=size))
    images = torch.rand(3, 3, size, size)
    labels = F.normalize(torch.randn(4, 32), dim=-1)
    logits = _session(result.path).run(["logits"], {"images": images.numpy(), "label_embeddings": labels.numpy()})[0]
    with torch.no_grad():
        np.testing.assert_allclose(logits, baseline(images, labels).numpy(), atol=1e-4, rtol=0)


def test_levels_that_the_size_does_not_have_are_refused(tiny_towers, tmp_path):
    with pytest.raises(ValueError, match="maximum level"):
        export_onnx(_model(tiny_towers), tmp_path / "m.onnx", ExportConfig(input_size=32, levels=(0, 1)))


def test_cli_exports_a_checkpoint_with_label_embeddings(tiny_towers, tmp_path, capsys):
    model = _model(tiny_towers)
    checkpoint = model.save_pretrained(tmp_path / "ckpt")
    out = tmp_path / "out" / "head.onnx"
    code = main(["export", str(out), "--checkpoint", str(checkpoint), "--input-size", "64",
                 "--labels", "red square, blue circle, green"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "wrote" in captured.out and "max |logit difference|" in captured.out
    embeddings = np.load(out.with_suffix(".labels.npy"))
    names = out.with_suffix(".labels.txt").read_text().splitlines()
    assert names == ["red square", "blue circle", "green"] and embeddings.shape == (3, 32)
    images = torch.rand(2, 3, 64, 64)
    logits = _session(out).run(["logits"], {"images": images.numpy(), "label_embeddings": embeddings})[0]
    loaded = ADDS.from_pretrained(checkpoint, towers=tiny_towers).eval()
    with torch.no_grad():
        expected = loaded(images, names)  # label strings through the model's own text path
    assert np.abs(logits - expected.numpy()).max() <= 1e-4
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["levels"] == [0, 1] and meta["max_abs_diff"] <= 1e-4


@pytest.mark.parametrize("argv,message", [
    (["export", "model.txt", "--model", "adds-tiny-vit", "--pretrained", "none"], "must end in .onnx"),
    (["export", "m.onnx", "--input-size", "0"], "--input-size"),
    (["export", "m.onnx", "--levels", "a,b"], "--levels"),
    (["export", "m.onnx", "--tolerance", "0"], "--tolerance"),
])
def test_cli_argument_errors_exit_2(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_missing_onnxruntime_is_one_line_and_exit_2(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` raises ImportError
    with pytest.raises(ExportDependencyError, match="missing: onnxruntime"):
        require_onnx()
    code = main(["export", str(tmp_path / "m.onnx"), "--model", "adds-tiny-vit", "--pretrained", "none"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip().splitlines() == [
        "adds export: error: ONNX export needs onnx and onnxruntime; missing: onnxruntime "
        "(install them with: pip install 'adds[export]')"
    ]
    assert not (tmp_path / "m.onnx").exists()


def test_benchmark_script_runs_on_tiny_towers(tmp_path):
    """benchmarks/onnx_export.py --quick end to end (no timing assertions): every plan row with a small difference."""
    import importlib.util
    from pathlib import Path

    benchmarks = Path(__file__).resolve().parents[1] / "benchmarks"
    sys.path.insert(0, str(benchmarks))
    try:
        spec = importlib.util.spec_from_file_location("benchmarks_onnx_export", benchmarks / "onnx_export.py")
        bench = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = bench
        spec.loader.exec_module(bench)
        assert bench.main(["--quick", "--out", str(tmp_path / "r.json")]) == 0
    finally:
        sys.path.remove(str(benchmarks))
        sys.modules.pop("benchmarks_onnx_export", None)
    rows = json.loads((tmp_path / "r.json").read_text())["rows"]
    assert [row["crops"] for row in rows] == [1, 5]
    assert all(row["max_abs_logit_diff"] <= 1e-4 and row["onnxruntime_images_per_s"] > 0 for row in rows)


def test_cli_uses_the_trained_input_size_and_reports_failures(tiny_towers, tmp_path, capsys):
    model = _model(tiny_towers)
    checkpoint = model.save_pretrained(tmp_path / "ckpt")
    (checkpoint / "training.json").write_text(json.dumps({"input_size": 64}))
    out = tmp_path / "m.onnx"
    assert main(["export", str(out), "--checkpoint", str(checkpoint)]) == 0
    meta = json.loads(out.with_suffix(".json").read_text())
    assert (meta["input_size"], meta["levels"], meta["crops"]) == (64, [0, 1], 5)
    assert not out.with_suffix(".labels.npy").exists()  # no --labels and no labels.txt
    capsys.readouterr()

    # A tolerance no float computation meets: the file is written, the check fails, exit 1 with one line.
    assert main(["export", str(out), "--checkpoint", str(checkpoint), "--tolerance", "1e-30"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "differs from PyTorch" in err[0] and out.is_file()

    assert main(["export", str(out), "--checkpoint", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("adds export: error:") and "missing" in err[0]


def test_cli_levels_without_a_size_take_the_smallest_size_that_has_them(tiny_towers, tmp_path, capsys):
    checkpoint = _model(tiny_towers).save_pretrained(tmp_path / "ckpt")
    out = tmp_path / "m.onnx"
    assert main(["export", str(out), "--checkpoint", str(checkpoint), "--levels", "0,1", "--no-verify"]) == 0
    meta = json.loads(out.with_suffix(".json").read_text())
    assert (meta["input_size"], meta["levels"], meta["max_abs_diff"]) == (64, [0, 1], None)
    assert "not verified" in capsys.readouterr().out
    assert main(["export", str(out), "--checkpoint", str(checkpoint), "--levels", "0,1", "--input-size", "32"]) == 2
    assert "maximum level" in capsys.readouterr().err
