"""ASRModel: the prompt (labels, train/inference agreement), batching, what trains, checkpoints.

Two models, both built the way train.py builds them:
  - "lora": a tiny HuBERT (transformers' HubertForCTC, random) and a tiny Qwen3 (Qwen3ForCausalLM, random) saved as
    real checkpoints, loaded by name from disk, projector + LoRA trainable: the course's recipe in miniature;
  - "scratch": the tiny preset (nanoaudio/tiny.py), every part trained, stored whole in model.safetensors.
"""

import math

import pytest
import torch

import train
from nanoaudio import NanoaudioError
from nanoaudio.audio import batch_audio
from nanoaudio.model import IGNORE, ASRModel, build_prompt, ctc_targets
from nanoaudio.text import normalize_text
from nanoaudio.tiny import tiny_vocab, train_tokenizer

transformers = pytest.importorskip("transformers")

from checkpoints import randomize_, save_transformers_model  # noqa: E402


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(tiny_vocab())


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, tokenizer):
    root = tmp_path_factory.mktemp("ckpt")
    enc_cfg = transformers.HubertConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, conv_dim=(16,) * 7,
        feat_extract_norm="layer", do_stable_layer_norm=True, num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=4, vocab_size=32)
    torch.manual_seed(0)
    save_transformers_model(randomize_(transformers.HubertForCTC(enc_cfg).eval(), seed=1), root / "enc")
    dec_cfg = transformers.Qwen3Config(
        vocab_size=tokenizer.vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, tie_word_embeddings=True,
        eos_token_id=tokenizer.eot_id, pad_token_id=tokenizer.pad_id)
    save_transformers_model(randomize_(transformers.Qwen3ForCausalLM(dec_cfg).eval(), seed=2), root / "dec",
                            generation_config={"eos_token_id": [tokenizer.eot_id]})
    tokenizer.save(root / "dec")
    return root


def build(checkpoints, *flags):
    args = train.parse_args(["--encoder", str(checkpoints / "enc"), "--decoder", str(checkpoints / "dec"),
                             "--precision", "fp32", *flags])
    torch.manual_seed(0)
    return train.build_model(args, torch.device("cpu"))


@pytest.fixture(scope="module")
def lora_model(checkpoints):
    model = build(checkpoints, "--lora-r", "4")
    with torch.no_grad():  # B = 0 at init would hide LoRA from the save/load checks
        for n, p in model.decoder.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    return model.eval()


def waves(seconds, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(int(s * 16000), generator=g) * 0.1 for s in seconds]


def test_labels_mark_exactly_the_transcript_and_end_token(tokenizer):
    ids, start, labels = build_prompt(tokenizer, "qwen3", 7, "three one four")
    marked = [(i, t) for i, t in enumerate(labels) if t != IGNORE]
    answer = tokenizer.encode("three one four") + [tokenizer.eot_id]
    assert [t for _, t in marked] == answer  # the transcript's tokens, then <|im_end|>
    assert [i for i, _ in marked] == list(range(len(ids) - len(answer), len(ids)))  # the last ones, contiguous
    assert ids[-len(answer):] == answer
    assert ids[start:start + 7] == [tokenizer.pad_id] * 7  # the audio slots


def test_training_and_inference_prompts_agree_up_to_the_transcript(tokenizer):
    for family in ("qwen3", "smollm3", "llama3"):
        train_ids, train_start, _ = build_prompt(tokenizer, family, 5, "hello world")
        infer_ids, infer_start, labels = build_prompt(tokenizer, family, 5)
        assert labels is None and train_start == infer_start
        assert train_ids[:len(infer_ids)] == infer_ids
        rendered = tokenizer.decode(train_ids, skip_special_tokens=False)
        assert rendered.startswith(tokenizer.decode(infer_ids, skip_special_tokens=False))
    text = tokenizer.decode(build_prompt(tokenizer, "qwen3", 2)[0], skip_special_tokens=False)
    assert "Transcribe the speech to text" in text and text.endswith("<think>\n\n</think>\n\n")


def test_a_batch_gives_the_same_per_sample_loss_as_single_samples(lora_model):
    texts = ["one two three", "the water", "seven seven"]
    w = waves([1.3, 0.7, 2.1])
    with torch.no_grad():
        wave, mask = batch_audio(w)
        batched = lora_model(wave, mask, texts)["per_sample"]
        single = torch.cat([lora_model(*batch_audio([x]), [t])["per_sample"] for x, t in zip(w, texts)])
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=1e-5)


def test_batched_generation_equals_one_at_a_time(lora_model):
    w = waves([1.0, 2.3, 0.5], seed=3)
    batched = lora_model.generate_ids(*batch_audio(w), max_new_tokens=6)
    single = [lora_model.generate_ids(*batch_audio([x]), max_new_tokens=6)[0] for x in w]
    assert batched == single


def ctc_log_likelihood(log_probs, target, blank=0):
    """log p(target | frames): the CTC forward recursion over the blank-extended labels, in Python floats
    (Graves et al. 2006, eq. 6-7): the reference for ASRModel.ctc_log_prob, which uses torch's ctc_loss."""
    def logsumexp(xs):
        top = max(xs)
        return top if top == -math.inf else top + math.log(sum(math.exp(x - top) for x in xs))

    ext = [blank]
    for t in target:
        ext += [t, blank]
    lp = log_probs.double().tolist()
    alpha = [lp[0][blank], lp[0][ext[1]] if len(ext) > 1 else -math.inf] + [-math.inf] * (len(ext) - 2)
    for f in range(1, len(lp)):
        alpha = [logsumexp([alpha[s]] + alpha[max(s - 1, 0):s]
                           + ([alpha[s - 2]] if s >= 2 and ext[s] != blank and ext[s] != ext[s - 2] else []))
                 + lp[f][ext[s]] for s in range(len(ext))]
    return logsumexp(alpha[-2:])


def test_beams_are_rescored_with_the_ctc_head(lora_model):
    model, w = lora_model, waves([1.2, 0.7], seed=3)
    wave, mask = batch_audio(w)
    nbest = model.nbest(wave, mask, num_beams=4, max_new_tokens=5)
    frames, frame_mask = model.encode_frames(wave, mask)
    log_probs = model.encoder.ctc_logits(frames).float().log_softmax(-1)  # (B, F, 32)
    for b, hyps in enumerate(nbest):
        assert len(hyps) == 4 and [h[1] for h in hyps] == sorted((h[1] for h in hyps), reverse=True)
        alone = model.nbest(w[b][None], None, num_beams=4, max_new_tokens=5)[0]  # no padding: the same search
        assert [h[0] for h in alone] == [h[0] for h in hyps]
        assert [h[1] for h in alone] == pytest.approx([h[1] for h in hyps], rel=1e-3)  # (padding: float noise)
        for ids, _, ctc in hyps:
            target = ctc_targets(normalize_text(model.tokenizer.decode(ids)))
            want = ctc_log_likelihood(log_probs[b, :int(frame_mask[b].sum())], target)
            assert ctc == pytest.approx(want, rel=1e-5)
    # ctc_weight 0: the decoder's best beam; 1: the beam the CTC head finds likeliest
    assert model.generate_ids(wave, mask, 5, num_beams=4, ctc_weight=0.0) == [hyps[0][0] for hyps in nbest]
    best_ctc = [max(hyps, key=lambda h: h[2])[0] for hyps in nbest]
    assert model.generate_ids(wave, mask, 5, num_beams=4, ctc_weight=1.0) == best_ctc
    assert best_ctc != [hyps[0][0] for hyps in nbest]  # (so the weight did change the choice)
    with pytest.raises(NanoaudioError, match="greedily"):
        model.generate_ids(wave, mask, 5, on_token=lambda *a: None, num_beams=2)


def test_a_gradient_step_changes_only_projector_and_lora(checkpoints):
    model = build(checkpoints, "--lora-r", "4").train()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("projector.") or "lora_" in n for n in trainable)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model(*batch_audio(waves([1.0, 1.5])), ["one two", "three"])["loss"].backward()
    opt.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed <= trainable
    assert any(n.startswith("projector.") for n in changed) and any("lora_B" in n for n in changed)
    assert not any(n.startswith(("encoder.", "decoder.")) and "lora_" not in n for n in changed)


def test_save_and_load_round_trip_with_lora(lora_model, tmp_path):
    lora_model.save(tmp_path / "ckpt")
    files = {p.name for p in (tmp_path / "ckpt").iterdir()}
    assert {"config.json", "model.safetensors", "adapter_config.json", "adapter_model.safetensors",
            "tokenizer.json"} <= files
    loaded = ASRModel.load(tmp_path / "ckpt")
    w, texts = waves([1.1, 0.6], seed=5), ["one", "two three"]
    with torch.no_grad():
        a = lora_model(*batch_audio(w), texts)["per_sample"]
        b = loaded(*batch_audio(w), texts)["per_sample"]
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    assert loaded.generate_ids(*batch_audio(w), max_new_tokens=5) == \
        lora_model.generate_ids(*batch_audio(w), max_new_tokens=5)


def test_save_and_load_round_trip_from_scratch(tmp_path):
    args = train.parse_args(["--preset", "tiny"])
    torch.manual_seed(0)
    model = train.build_model(args, torch.device("cpu")).eval()
    model.save(tmp_path / "tiny")
    loaded = ASRModel.load(tmp_path / "tiny")
    assert loaded.config == model.config
    for (n, p), (m, q) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert n == m and torch.equal(p, q), n
    w = waves([0.9], seed=7)
    assert loaded.transcribe(w, max_new_tokens=4) == model.transcribe(w, max_new_tokens=4)


def test_ctc_loss_trains_the_tiny_encoder():
    args = train.parse_args(["--preset", "tiny"])
    torch.manual_seed(0)
    model = train.build_model(args, torch.device("cpu")).train()
    out = model(*batch_audio(waves([1.0, 0.8])), ["one two", "water"])
    assert set(out) == {"loss", "per_sample", "lm_loss", "ctc_loss"}
    torch.testing.assert_close(out["loss"], out["lm_loss"] + 0.5 * out["ctc_loss"])
    out["loss"].backward()
    assert model.encoder.lm_head.weight.grad.abs().sum() > 0  # the CTC head gets a gradient
    assert model.decoder.model.embed_tokens.weight.grad.abs().sum() > 0  # from scratch: the decoder trains too


def test_an_empty_transcript_trains_the_end_token_and_all_blanks():
    """Non-speech clips (issue 27) carry the empty transcript: the decoder's one label is the end token and the
    CTC head's target is blank on every frame (its loss: minus the sum of the blank log-probabilities)."""
    args = train.parse_args(["--preset", "tiny"])
    torch.manual_seed(0)
    model = train.build_model(args, torch.device("cpu")).train(False)
    _, _, labels = build_prompt(model.tokenizer, model.family, 7, "")
    assert [t for t in labels if t != IGNORE] == [model.tokenizer.eot_id]
    wave, mask = batch_audio(waves([1.0, 0.8]))
    out = model(wave, mask, ["", "one two"])
    assert all(torch.isfinite(out[k]).all() for k in ("loss", "lm_loss", "ctc_loss", "per_sample"))
    frames, frame_mask = model.encode_frames(wave, mask)
    blank = model.encoder.ctc_logits(frames).float().log_softmax(-1)[0, :int(frame_mask[0].sum()), 0]
    torch.testing.assert_close(model.ctc_loss(frames[:1], frame_mask[:1], [""]), -blank.sum())


def test_load_rejects_folders_that_are_not_checkpoints(tmp_path):
    with pytest.raises(NanoaudioError, match="config.json"):
        ASRModel.load(tmp_path)
    (tmp_path / "config.json").write_text('{"model_type": "qwen3"}')
    with pytest.raises(NanoaudioError, match="not a nanoaudio checkpoint"):
        ASRModel.load(tmp_path)


def test_prompt_never_hits_the_tokenizer_with_the_audio_marker(tokenizer):
    # the marker splits the rendered prompt; if it leaked, the audio slots would be text tokens instead
    ids, start, _ = build_prompt(tokenizer, "qwen3", 3, "hi")
    text = tokenizer.decode(ids[:start], skip_special_tokens=False)
    assert "\x00" not in text and text.endswith("<|im_start|>user\n")


def test_tiny_export_halves_the_bytes_and_loads_back_in_fp32(tmp_path):
    from safetensors import safe_open

    from nanoaudio.tiny import export

    args = train.parse_args(["--preset", "tiny"])
    torch.manual_seed(0)
    model = train.build_model(args, torch.device("cpu")).eval()
    model.save(tmp_path / "full")
    export(tmp_path / "full", tmp_path / "bundle")
    assert {p.name for p in (tmp_path / "bundle").iterdir()} == {"config.json", "model.safetensors",
                                                                  "tokenizer.json", "tokenizer_config.json"}
    with safe_open(str(tmp_path / "bundle" / "model.safetensors"), "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"F16"}
    full = (tmp_path / "full" / "model.safetensors").stat().st_size
    assert (tmp_path / "bundle" / "model.safetensors").stat().st_size < 0.55 * full
    loaded = ASRModel.load(tmp_path / "bundle")
    for (n, p), q in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert q.dtype == torch.float32
        torch.testing.assert_close(q, p.half().float(), atol=0, rtol=0, msg=n)
