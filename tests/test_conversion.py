"""Converting the HSPNet authors' checkpoints (scripts/convert_official_checkpoint.py, hspnet.conversion).

The real checkpoints cannot be downloaded here, so the tests build synthetic ones with exactly the official key
names and the official structure (tests/official_reference.py: the authors' module layout on an OpenAI-layout CLIP
ResNet, reduced sizes, random values), convert them, and compare the converted model's logits with that independent
re-implementation of the official forward. One test checks the full-size RN50 / COCO key structure on the meta
device (no memory, no time)."""

import importlib.util
import json
import os
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

import hspnet
from hspnet import HSPNetConfig, HSPNetForImageClassification
from hspnet.conversion.folder import run_conversion
from hspnet.conversion.official import (
    check_official_layout,
    convert_official_checkpoint,
    convert_official_state_dict,
    find_eos_positions,
    infer_official_architecture,
    load_official_checkpoint,
    official_checkpoint_layout,
)
from hspnet.conversion.verify import verify_conversion
from hspnet.models.openai_clip import ConversionError, map_openai_clip_weights, read_torchscript_archive
from tests.helpers import GROUPS, LABEL_TO_GROUP, LABELS
from tests.official_reference import RefCLIP, RefHSPNet, build_official

HIERARCHY = dict(labels=LABELS, groups=GROUPS, label_to_group=LABEL_TO_GROUP)
SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "convert_official_checkpoint.py"


@pytest.fixture(scope="module")
def official():
    """(reference CLIP, reference HSPNet, relation) of a synthetic official checkpoint."""
    return build_official(LABELS, GROUPS, LABEL_TO_GROUP, seed=0)


@pytest.fixture(scope="module")
def files(official, tmp_path_factory):
    _, model, relation = official
    folder = tmp_path_factory.mktemp("official")
    torch.save(model.state_dict(), folder / "hspnet+toy.ckpt")
    np.save(folder / "relation.npy", relation.numpy())
    (folder / "hierarchy.json").write_text(json.dumps(HIERARCHY))
    return folder


def front_matter(card: str) -> dict:
    """The YAML block between the first two `---` lines of a model card, parsed by a YAML library."""
    import yaml

    assert card.startswith("---\n"), card[:40]
    block, rest = card[4:].split("\n---\n", 1)
    assert rest.strip(), "the card has a body"
    return yaml.safe_load(block)


def pixels(n=3, seed=1):
    return torch.randn(n, 3, 64, 64, generator=torch.Generator().manual_seed(seed))


def test_converted_logits_equal_the_official_forward(official, files):
    _, reference, _ = official
    model, report, state = convert_official_checkpoint(files / "hspnet+toy.ckpt", files / "relation.npy",
                                                       hierarchy=HIERARCHY)
    assert set(state) == set(reference.state_dict())
    # EOS positions derived from the stored embeddings equal the official argmax over the (unsaved) token ids
    assert report.group_eos_positions.tolist() == reference.parent_prompt_learner.ids.argmax(-1).tolist()
    assert report.label_eos_positions.tolist() == reference.child_prompt_learner.ids.argmax(-1).tolist()
    x = pixels()
    with torch.no_grad():
        expected = reference(x)
        got = model(pixel_values=x).logits
    assert float(expected.std()) > 0.05  # the comparison is not between near-constant outputs
    torch.testing.assert_close(got, expected, atol=2e-5, rtol=1e-5)
    config = model.config
    assert config.vision_backbone == "clip_resnet" and config.resnet_layers == [1, 2, 1, 1]
    assert config.label_names == LABELS and config.group_names == GROUPS and config.label_to_group == LABEL_TO_GROUP
    assert config.n_ctx == 4 and config.gcn_hidden_dims == [32, 32] and config.clip_config.text_config.vocab_size == 0
    assert sorted(report.dropped_keys) == [f"parent_prompt_learner.{k}" for k in
                                           ("ctx", "token_middle", "token_prefix", "token_suffix")]
    assert not any(p.requires_grad for p in model.hspnet.clip.text_model.parameters())


def test_verify_compares_with_a_direct_reimplementation(official, files):
    model, report, state = convert_official_checkpoint(files / "hspnet+toy.ckpt", files / "relation.npy",
                                                       hierarchy=HIERARCHY)
    result = verify_conversion(model, state, files / "relation.npy", report, num_images=2)
    assert result["float32"] < 1e-4 and result["float64"] < 1e-6 and result["max_abs_logit"] > 0.1


def test_end_to_end_folder_loads_and_has_a_model_card(official, files, tmp_path):
    _, reference, _ = official
    out = tmp_path / "hspnet-toy"
    summary = run_conversion(files / "hspnet+toy.ckpt", out, relation=files / "relation.npy",
                             hierarchy=files / "hierarchy.json", verify=True, log=lambda *_: None)
    assert summary["verify"]["float32"] < 1e-4
    names = {p.name for p in out.iterdir()}
    assert {n for n in names if not n.endswith(".py")} == {"README.md", "config.json", "conversion.json",
                                                           "model.safetensors", "preprocessor_config.json"}
    code = {n for n in names if n.endswith(".py")}  # the remote code save_pretrained copies: modules of the package
    assert {"configuration_hspnet.py", "modeling_hspnet.py", "modeling_clip_resnet.py", "image_processing_hspnet.py",
            "losses.py"} <= code and all((Path(hspnet.__file__).parent / "models" / "hspnet" / n).is_file() for n in code)
    card = (out / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: transformers\n")
    metadata = front_matter(card)  # no built-in dataset: no published result, so no model-index
    assert set(metadata) == {"library_name", "pipeline_tag", "tags", "metrics"}, metadata
    for needle in ("metrics:", "Wang", "ACM Multimedia 2023", "jameslahm/HSPNet", "hspnet+toy.ckpt", "SHA-256"):
        assert needle in card, needle
    record = json.loads((out / "conversion.json").read_text())
    assert record["label_eos_positions"] == summary["report"].label_eos_positions.tolist()
    processor = json.loads((out / "preprocessor_config.json").read_text())
    assert processor["size"] == {"shortest_edge": 64} and processor["resample"] == 3
    assert processor["image_mean"] == pytest.approx([0.48145466, 0.4578275, 0.40821073])
    loaded = HSPNetForImageClassification.from_pretrained(out)
    x = pixels()
    with torch.no_grad():
        torch.testing.assert_close(loaded(pixel_values=x).logits, reference(x), atol=2e-5, rtol=1e-5)
    with pytest.raises(ConversionError, match="not empty"):
        run_conversion(files / "hspnet+toy.ckpt", out, relation=files / "relation.npy", hierarchy=HIERARCHY,
                       log=lambda *_: None)


def _cli():
    spec = importlib.util.spec_from_file_location("convert_official_checkpoint", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_command_line(files, tmp_path, capsys):
    cli = _cli()
    ckpt = str(files / "hspnet+toy.ckpt")
    rc = cli.main([ckpt, str(tmp_path / "out"), "--hierarchy", str(files / "hierarchy.json"), "--relation",
                   str(files / "relation.npy"), "--verify"])
    printed = capsys.readouterr().out
    assert rc == 0 and "Largest |logit difference|" in printed and (tmp_path / "out" / "model.safetensors").exists()
    rc = cli.main([ckpt, str(tmp_path / "out2"), "--hierarchy", str(files / "hierarchy.json")])
    err = capsys.readouterr().err
    assert rc == 1 and "relation file" in err and len(err.strip().splitlines()) == 1, err


def test_push_to_hub_uploads_the_folder_in_one_commit(files, tmp_path, monkeypatch, capsys):
    from huggingface_hub import HfApi
    from huggingface_hub.hf_api import RepoUrl

    calls = []
    monkeypatch.setattr(HfApi, "create_repo", lambda api, repo_id, **kw: calls.append(("repo", repo_id, kw))
                        or RepoUrl(f"https://huggingface.co/{repo_id}"))
    monkeypatch.setattr(HfApi, "create_commit", lambda api, repo_id, operations, **kw: calls.append(
        ("commit", repo_id, sorted(op.path_in_repo for op in operations))))
    out = tmp_path / "out"
    rc = _cli().main([str(files / "hspnet+toy.ckpt"), str(out), "--hierarchy", str(files / "hierarchy.json"),
                      "--relation", str(files / "relation.npy"), "--push_to_hub", "--hub_model_id", "me/hspnet-toy", "--hub_private_repo"])
    assert rc == 0, capsys.readouterr().err
    assert [call[0] for call in calls] == ["repo", "commit"] and calls[0][2]["private"] is True
    assert calls[1][1] == "me/hspnet-toy" and calls[1][2] == sorted(p.name for p in out.iterdir())
    assert "conversion.json" in calls[1][2] and "README.md" in calls[1][2]


def test_builtin_dataset_inferred_from_the_label_count(tmp_path):
    from hspnet.data import builtin_hierarchy

    voc = builtin_hierarchy("voc")
    _, model, relation = build_official(voc.labels, voc.groups, voc.label_to_group, seed=1)
    torch.save(model.state_dict(), tmp_path / "hspnet+voc.ckpt")
    np.save(tmp_path / "relation+voc+super.npy", relation.numpy())  # the authors' name, found beside the checkpoint
    summary = run_conversion(tmp_path / "hspnet+voc.ckpt", tmp_path / "hspnet-voc", log=lambda *_: None)
    config = HSPNetConfig.from_pretrained(tmp_path / "hspnet-voc")
    assert summary["dataset"] == "voc" and config.label_names == list(voc.labels)
    assert config.loss_kwargs == {"change_epoch": 2}
    card = (tmp_path / "hspnet-voc" / "README.md").read_text()
    assert "90.4" in card and "PASCAL VOC 2012" in card and "releases/download/v1.0/hspnet+voc.ckpt" in card
    metadata = front_matter(card)
    assert metadata["library_name"] == "transformers" and metadata["pipeline_tag"] == "image-classification"
    assert "hspnet" in metadata["tags"] and metadata["datasets"] == ["pascal_voc"]
    (result,) = metadata["model-index"][0]["results"]
    assert result["dataset"] == {"type": "pascal_voc", "name": "PASCAL VOC 2012"}
    assert [(m["type"], m["value"]) for m in result["metrics"]] == [("mAP", 90.4)]  # the paper's VOC result
    _, small, rel = build_official(LABELS, GROUPS, LABEL_TO_GROUP)
    torch.save(small.state_dict(), tmp_path / "small.ckpt")
    with pytest.raises(ConversionError, match="has 6 label prompts but coco has 80"):
        run_conversion(tmp_path / "small.ckpt", tmp_path / "x", dataset="coco", relation=rel, log=lambda *_: None)
    with pytest.raises(ConversionError, match="names no built-in dataset"):
        run_conversion(tmp_path / "small.ckpt", tmp_path / "x", relation=rel, log=lambda *_: None)


def test_missing_extra_and_misshaped_keys_are_all_reported(official):
    _, model, relation = official
    state = dict(model.state_dict())
    state.pop("image_encoder.layer2.1.bn2.running_var")
    state["gcn.bias"] = torch.zeros(3)
    state["text_encoder.transformer.resblocks.1.mlp.c_fc.bias"] = torch.zeros(7)
    with pytest.raises(ConversionError) as info:
        convert_official_state_dict(state, relation, hierarchy=HIERARCHY)
    message = str(info.value)
    assert "missing key(s): ['image_encoder.layer2.1.bn2.running_var']" in message
    assert "unexpected key(s), not mapped: ['gcn.bias']" in message
    assert "text_encoder.transformer.resblocks.1.mlp.c_fc.bias: (7,) (expected (512,))" in message
    anchorless = {k: v for k, v in model.state_dict().items() if not k.startswith("gcn.")}
    with pytest.raises(ConversionError, match=r"Not an official HSPNet .*gcn.gc1.weight"):
        convert_official_state_dict(anchorless, relation, hierarchy=HIERARCHY)


def test_hierarchy_and_relation_must_fit(official):
    _, model, relation = official
    state = model.state_dict()
    with pytest.raises(ConversionError, match="has 5 labels and 4 groups"):
        convert_official_state_dict(state, relation, hierarchy=dict(HIERARCHY, labels=LABELS[:5],
                                                                     label_to_group=LABEL_TO_GROUP[:5]))
    with pytest.raises(ConversionError, match=r"relation matrix has shape \(9, 9\), expected \(10, 10\)"):
        convert_official_state_dict(state, relation[:9, :9], hierarchy=HIERARCHY)


class Exploit:
    def __reduce__(self):
        return (os.system, ("echo pwned > pwned.txt",))


def test_only_plain_state_dicts_are_accepted(official, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with open(tmp_path / "exploit.ckpt", "wb") as handle:
        pickle.dump({"gcn.gamma": Exploit()}, handle, protocol=2)
    with pytest.raises(ConversionError, match=r"refused by torch.load\(weights_only=True\).*GLOBAL"):
        load_official_checkpoint(tmp_path / "exploit.ckpt")
    assert not (tmp_path / "pwned.txt").exists()
    torch.save({"model": torch.nn.Linear(2, 2)}, tmp_path / "module.ckpt")  # a pickled module, not a state dict
    with pytest.raises(ConversionError, match="weights_only"):
        load_official_checkpoint(tmp_path / "module.ckpt")
    torch.save({"gcn.gamma": torch.ones(1), "epoch": 3}, tmp_path / "mixed.ckpt")
    with pytest.raises(ConversionError, match=r"not a plain state dict: entries \['epoch'\]"):
        load_official_checkpoint(tmp_path / "mixed.ckpt")
    torch.save([torch.ones(1)], tmp_path / "list.ckpt")
    with pytest.raises(ConversionError, match="does not hold a state dict"):
        load_official_checkpoint(tmp_path / "list.ckpt")
    # wrappers and DDP prefixes are unwrapped
    _, model, _ = official
    torch.save({"state_dict": {"module." + k: v for k, v in model.state_dict().items()}}, tmp_path / "wrapped.ckpt")
    assert set(load_official_checkpoint(tmp_path / "wrapped.ckpt")) == set(model.state_dict())


class ToyTokenizer:
    """The toy OpenAI-style tokenizer of official_reference behind the HF tokenizer call interface."""

    def __init__(self, vocab_size):
        self.vocab_size = vocab_size

    def __call__(self, text, padding=None, max_length=None, truncation=None, return_tensors=None):
        from tests.official_reference import toy_tokenize

        texts = [text] if isinstance(text, str) else text
        rows = [toy_tokenize(t, self.vocab_size) for t in texts]
        if return_tensors == "pt":
            return {"input_ids": torch.stack(rows)}
        ids = [row[: int(row.argmax()) + 1].tolist() for row in rows]
        return {"input_ids": ids[0] if isinstance(text, str) else ids}


def test_clip_token_table_lets_users_re_embed_prompts(official):
    clip, model, relation = official
    converted, report = convert_official_state_dict(model.state_dict(), relation, hierarchy=HIERARCHY,
                                                    clip_weights=clip.state_dict())
    text_config = converted.config.clip_config.text_config
    assert (text_config.vocab_size, text_config.bos_token_id, text_config.eos_token_id) == (64, 62, 63)
    base = converted.hspnet
    torch.testing.assert_close(base.clip.text_model.embeddings.token_embedding.weight, clip.token_embedding.weight)
    stored = {name: getattr(base, name).clone() for name in ("group_prompt_embeds", "label_prompt_embeds",
                                                              "group_eos_positions", "label_eos_positions")}
    base.set_prompts(ToyTokenizer(64))  # what a user does after renaming labels: same prompts, same result
    kept = base.config.prompt_length  # set_prompts keeps the prompts up to the last EOS (the tower is causal)
    assert kept == 1 + max(stored["group_eos_positions"].max(), stored["label_eos_positions"].max())
    torch.testing.assert_close(base.group_prompt_embeds, stored["group_prompt_embeds"][:, :kept])
    torch.testing.assert_close(base.label_prompt_embeds[:, 5:], stored["label_prompt_embeds"][:, 5:kept])
    assert base.label_eos_positions.tolist() == stored["label_eos_positions"].tolist()
    assert base.group_eos_positions.tolist() == stored["group_eos_positions"].tolist()
    other, _, _ = build_official(LABELS, GROUPS, LABEL_TO_GROUP, seed=5)
    with pytest.raises(ConversionError, match="do not match the checkpoint"):
        convert_official_state_dict(model.state_dict(), relation, hierarchy=HIERARCHY,
                                    clip_weights=other.state_dict())


def test_eos_derivation_checks_its_assumptions():
    torch.manual_seed(0)
    sos, eos, pad = torch.randn(3, 8)
    prompts = torch.randn(3, 10, 8)
    prompts[:, 0] = sos
    for row, position in enumerate([4, 6, 9]):
        prompts[row, position] = eos
        prompts[row, position + 1 :] = pad
    positions, tokens = find_eos_positions(prompts)
    assert positions.tolist() == [4, 6, 9] and torch.equal(tokens.eos, eos)
    noisy = prompts + 1e-6 * torch.randn_like(prompts)  # EMA-style float noise is tolerated
    assert find_eos_positions(noisy)[0].tolist() == [4, 6, 9]
    broken = prompts.clone()
    broken[1, 6] = torch.randn(8)
    with pytest.raises(ConversionError, match="do not share one EOS token vector"):
        find_eos_positions(broken, ["a", "b", "c"])


def test_torchscript_archives_are_read_without_running_code(official, tmp_path):
    clip, _, _ = official
    torch.jit.trace(clip, torch.ones(1)).save(tmp_path / "clip.pt")
    state = read_torchscript_archive(tmp_path / "clip.pt")
    expected = clip.state_dict()
    assert set(state) == set(expected)
    for key, value in expected.items():
        assert torch.equal(state[key], value), key
    assert read_torchscript_archive(__file__) is None  # not an archive
    # a TorchScript-shaped zip whose data.pkl calls a function is refused
    with zipfile.ZipFile(tmp_path / "evil.pt", "w") as archive:
        archive.writestr("evil/data.pkl", pickle.dumps(Exploit(), protocol=2))
        archive.writestr("evil/constants.pkl", pickle.dumps((), protocol=2))
    with pytest.raises(ConversionError, match="refusing"):
        read_torchscript_archive(tmp_path / "evil.pt")


def test_full_size_rn50_coco_key_structure_on_the_meta_device():
    labels, groups = [f"label {i}" for i in range(80)], [f"group {g}" for g in range(12)]
    label_to_group = [i % 12 for i in range(80)]
    with torch.device("meta"):
        clip = RefCLIP(embed_dim=1024, resnet_layers=(3, 4, 6, 3), resnet_width=64, image_size=224,
                       vocab_size=49408, text_width=512, text_layers=12)
        official = RefHSPNet(clip, labels, groups, label_to_group, None, vocab_size=49408)
    state = official.state_dict()
    # 339 image encoder (RN50 with batch-norm statistics) + 148 text encoder (12 blocks x 12 + 4) + 5 parent prompt
    # learner + 6 child prompt learner (2 buffers + meta-net) + 4 GCN + logit_scale
    assert len(state) == 339 + 148 + 5 + 6 + 4 + 1
    arch = infer_official_architecture(state)
    assert arch == dict(text_width=512, text_layers=12, context_length=77, projection_dim=1024,
                        resnet_layers=[3, 4, 6, 3], resnet_width=64, resnet_image_size=224, num_groups=12,
                        num_labels=80, n_ctx=4, gcn_hidden_dims=[2048, 2048])
    layout = official_checkpoint_layout(arch)
    check_official_layout(state, layout)  # every key, every shape
    assert {k: tuple(v.shape) for k, v in state.items()} == layout
    # the mapping covers the HF model exactly
    clip_config, backbone, clip_state, used = map_openai_clip_weights(state, "text_encoder.", "image_encoder.")
    config = HSPNetConfig(clip_config=clip_config, **backbone, id2label=dict(enumerate(labels)), group_names=groups,
                          label_to_group=label_to_group)
    assert (config.resnet_heads, config.clip_config.text_config.num_attention_heads) == (32, 8)
    with torch.device("meta"):
        hf = HSPNetForImageClassification(config)
    target = {k: tuple(v.shape) for k, v in hf.hspnet.clip.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in clip_state.items()} == target
    assert sum(p.numel() for p in hf.hspnet.clip.vision_model.parameters()) == 38_316_896  # CLIP RN50's image tower
    hf_state = hf.hspnet.state_dict()
    assert tuple(hf_state["gcn.gc1.weight"].shape) == layout["gcn.gc1.weight"]
    assert tuple(hf_state["meta_net.linear1.weight"].shape) == layout["child_prompt_learner.meta_net.linear1.weight"]
    assert tuple(hf_state["label_prompt_embeds"].shape) == (80, 77, 512)
    assert tuple(hf_state["group_prompt_embeds"].shape) == layout["parent_prompt_learner.embedding"]
    unmapped = set(state) - used - {k for k in state if k.startswith(("gcn.", "child_prompt_learner.",
                                                                      "parent_prompt_learner."))}
    assert unmapped == set()


class WritesAFile:
    """An object whose unpickling writes `unpickled.txt` (np.save pickles the objects of a dtype=object array)."""

    def __reduce__(self):
        return (os.system, ("echo unpickled > unpickled.txt",))


def test_bad_hierarchy_and_relation_files_are_one_line_naming_them(files, tmp_path, monkeypatch, capsys):
    from hspnet.cli import main

    monkeypatch.chdir(tmp_path)
    ckpt, relation, hierarchy = (str(files / name) for name in ("hspnet+toy.ckpt", "relation.npy", "hierarchy.json"))
    out = tmp_path / "out"
    (out / "kept").mkdir(parents=True)
    (out / "kept" / "previous.txt").write_text("an earlier conversion")

    def error(hierarchy_file, relation_file):
        capsys.readouterr()
        status = main(["convert", ckpt, str(out), "--hierarchy", str(hierarchy_file), "--relation",
                       str(relation_file), "--overwrite"])
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.strip()]
        assert status == 1 and len(lines) == 1 and "Traceback" not in err, err[-2000:]
        assert lines[0].startswith("hspnet convert: error: "), lines
        return lines[0][len("hspnet convert: error: "):]

    def write(name, text):
        (tmp_path / name).write_text(text)
        return tmp_path / name

    good = dict(labels=LABELS, groups=GROUPS, label_to_group=LABEL_TO_GROUP)
    # malformed JSON: the file, its line and column (the "]" of line 3, column 13)
    broken = write("broken.json", '{"labels": ["cat",\n  "dog"],\n "groups": [}\n')
    assert error(broken, relation) == f"{broken}, line 3: invalid JSON: Expecting value (column 13)"
    # valid JSON that is not a hierarchy
    listed = write("list.json", json.dumps(LABELS))
    assert error(listed, relation).startswith(f"{listed}: expected a JSON object with the keys 'labels', 'groups', "
                                              "'label_to_group', got a list")
    lacking = write("lacking.json", json.dumps(dict(labels=LABELS, groups=GROUPS)))
    assert error(lacking, relation).startswith(f"{lacking}: the key 'label_to_group' is missing")
    outside = write("outside.json", json.dumps(dict(good, label_to_group=LABEL_TO_GROUP[:5] + [9]), indent=1))
    line = outside.read_text().splitlines().index(' "label_to_group": [') + 1
    assert error(outside, relation) == (f"{outside}, line {line}, field 'label_to_group': entry 5 is 9, not a group "
                                        "index in 0..3")
    strings = write("strings.json", json.dumps(dict(good, labels=LABELS[:5] + [7])))
    assert error(strings, relation).startswith(f"{strings}, line 1, field 'labels': every entry must be a non-empty "
                                               "name (a string), got 7")

    # an object array: refused without unpickling anything, the file named
    objects = tmp_path / "objects.npy"
    np.save(objects, np.array([[1.0, WritesAFile()], [None, 2.0]], dtype=object), allow_pickle=True)
    assert error(hierarchy, objects) == (f"{objects}: not a numeric .npy array (it holds Python objects (an object "
                                         "array), which only unpickling could read; refused)")
    assert not (tmp_path / "unpickled.txt").exists()
    words = tmp_path / "words.npy"
    np.save(words, np.array([["cat", "dog"], ["car", "bus"]]))
    assert error(hierarchy, words) == f"{words}: holds <U3 values, not a numeric similarity matrix"
    pickled = tmp_path / "pickled.npy"
    with open(pickled, "wb") as handle:
        pickle.dump({"relation": WritesAFile()}, handle)
    assert error(hierarchy, pickled).startswith(f"{pickled}: not a numeric .npy array (")
    assert not (tmp_path / "unpickled.txt").exists()
    nan = tmp_path / "nan.npy"
    np.save(nan, np.full((10, 10), np.nan, dtype=np.float32))
    assert error(hierarchy, nan) == f"{nan}: contains NaN or infinite values"
    small = tmp_path / "small.npy"
    np.save(small, np.eye(9, dtype=np.float32))
    assert error(hierarchy, small).startswith(f"{small}: the relation matrix has shape (9, 9), expected (10, 10)")
    # nothing was written over the earlier output
    assert [p.name for p in out.iterdir()] == ["kept"] and (out / "kept" / "previous.txt").read_text() == (
        "an earlier conversion")
