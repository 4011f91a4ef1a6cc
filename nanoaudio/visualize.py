"""A picture of the projection: what the AudioProjector does to the encoder's frames, for one audio file.

    python -m nanoaudio.visualize audio.wav                                   # the bundled tiny model
    python -m nanoaudio.visualize audio.wav --checkpoint out/qwen3-8b/last -o projection.png --device cuda

The decoder reads the audio tokens in place of word embeddings, so two questions tell whether the bridge
works: are the audio tokens on the scale of the text embeddings, and do they point anywhere near words?
The figure answers both, over a waveform strip with time in seconds so everything lines up:
 (a) the L2 norm of every vector at each stage, against the band (5-95 percentile) and median of the
     decoder's text-embedding norms:
        encoder frames (50/s, Ce) -> stacked k frames (10/s, k*Ce) -> ln_pre -> proj -> ln_post = audio tokens (Cd)
     ln_pre puts every stacked vector at norm ~sqrt(k*Ce)*|w|; ln_post's learned weight alone sets the scale
     the decoder sees (sqrt(Cd) at init, where the weight is 1).
 (b) for each audio token, its top-k nearest text tokens by cosine similarity in the decoder's input
     embedding space (special/added tokens and the unused padding rows of the vocabulary are skipped).
     A trained projector need not land on words (the decoder reads directions no word has), but the top-1
     cosine shows how far from the text manifold the audio sits.
Numbers (`projection_stats`) and drawing (`plot_projection`) are separate, so the numbers can be tested and
reused; the command also prints a text summary. matplotlib is an optional extra: pip install 'nanoaudio[viz]'.
Legend: S samples, F encoder frames, N audio tokens, V vocabulary, Ce/Cd encoder/decoder width, k stack factor.
"""

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from nanoaudio import NanoaudioError
from nanoaudio.audio import SAMPLE_RATE
from nanoaudio.cli import check_device, output_file, positive_int
from nanoaudio.load import DTYPES
from nanoaudio.tiny import BUNDLED  # the bundled tiny model

TOP_K = 3  # nearest text tokens shown per audio token
VOCAB_CHUNK = 16384  # embedding rows per cosine matmul: Qwen3's 151k x 4096 never needs a full fp32 copy
LABEL_CHARS = 8  # token strings are cut to this many characters in the figure
IMAGE_SUFFIXES = (".png", ".pdf", ".svg", ".jpg")  # what savefig writes, chosen by the file name

# (key, label, time step): the stages in data-flow order; "frame" = one encoder frame (20 ms), "token" = one
# audio token (k frames)
STAGES = [
    ("frames", "encoder frames", "frame"),
    ("stacked", "stacked frames", "token"),
    ("ln_pre", "after ln_pre (RMSNorm)", "token"),
    ("proj", "after proj", "token"),
    ("tokens", "audio tokens (after ln_post)", "token"),
]


# -----------------------------------------------------------------------------
# the numbers


def text_token_ids(model) -> torch.Tensor:
    """Ids of the decoder's ordinary text tokens: no added/special tokens (<|im_start|>, <think>, ...), and
    none of the rows a vocabulary padded to a multiple of 64 has beyond the tokenizer's last id."""
    tok = model.tokenizer
    V = model.decoder.model.embed_tokens.weight.shape[0]
    keep = torch.zeros(V, dtype=torch.bool)
    keep[:min(V, tok.vocab_size)] = True
    for i in tok.tk.get_added_tokens_decoder():
        if i < V:
            keep[i] = False
    return keep.nonzero()[:, 0]


def projector_stages(projector, frames: torch.Tensor) -> dict[str, torch.Tensor]:
    """frames (F, Ce) of one unpadded utterance -> every intermediate of AudioProjector.forward, by calling its
    submodules in forward's order (it has no hook to return them). Dropout is skipped: this is eval mode."""
    from nanoaudio.projector import stack_frames

    p = projector
    x = {"stacked": stack_frames(frames[None], p.config.stack)[0]}  # (F, Ce) -> (N, k*Ce)
    x["ln_pre"] = p.ln_pre(x["stacked"])
    if p.config.kind == "linear":
        x["proj"] = p.proj(x["ln_pre"])  # (N, k*Ce) -> (N, Cd)
    else:
        x["proj"] = p.down_proj(F.silu(p.gate_proj(x["ln_pre"])) * p.up_proj(x["ln_pre"]))  # (N, k*Ce) -> (N, Cd)
    x["tokens"] = p.ln_post(x["proj"])
    return x


def token_string(tokenizer, i: int) -> str:
    """The text of token i; a byte-level BPE piece of a multi-byte character decodes to U+FFFD on its own,
    so such tokens are shown in the BPE's own spelling instead (e.g. 'Ã¤')."""
    text = tokenizer.decode([i], skip_special_tokens=False)
    return tokenizer.tk.id_to_token(i) if "\ufffd" in text else text


def compare_with_text(tokens: torch.Tensor, emb: torch.Tensor, allowed: torch.Tensor, top_k: int):
    """tokens (N, Cd), emb (V, Cd), allowed (V',) ids -> nearest ids (N, top_k) and their cosines (N, top_k),
    best first, among the allowed rows; and the L2 norm of every embedding row (V,), fp32."""
    q = F.normalize(tokens.float(), dim=-1)  # (N, Cd)
    V = emb.shape[0]
    sims = torch.empty(tokens.shape[0], V, device=tokens.device)  # (N, V)
    norms = torch.empty(V, device=tokens.device)  # (V,)
    for i in range(0, V, VOCAB_CHUNK):
        rows = emb[i:i + VOCAB_CHUNK].float()  # (chunk, Cd), fp32 for a stable ranking
        norms[i:i + VOCAB_CHUNK] = rows.norm(dim=-1)
        sims[:, i:i + VOCAB_CHUNK] = q @ rows.T / norms[i:i + VOCAB_CHUNK].clamp_min(1e-12)  # cosines
    skip = torch.ones(V, dtype=torch.bool, device=tokens.device)
    skip[allowed] = False
    sims[:, skip] = float("-inf")  # skipped ids can never win
    cos, ids = sims.topk(min(top_k, len(allowed)), dim=-1)
    return ids, cos, norms


@torch.inference_mode()
def projection_stats(model, waveform: torch.Tensor, top_k: int = TOP_K) -> dict:
    """One raw 16 kHz waveform (S,) -> the numbers behind the figure, all on the CPU:

        waveform (S,), sample_rate, stack k, seconds_per_token
        norms   {stage: (n,) L2 norm of each vector}   stages: frames, stacked, ln_pre, proj, tokens
        shapes  {stage: (n, C)}, labels {stage: str}, hop {stage: seconds between vectors}
        text_norm {p5, p50, p95, mean, std, count}     over the decoder's text-token embeddings
        nearest_ids (N, top_k), nearest_cosine (N, top_k), nearest_tokens [N lists of top_k strings]
    The model is put in eval mode (no dropout). Frames and tokens come from model.encode_audio, the path
    training and inference use; the projector's intermediates are recomputed and must reproduce the tokens.
    """
    from nanoaudio.audio import batch_audio

    model.eval()
    device = next(model.decoder.parameters()).device
    wave = torch.as_tensor(waveform, dtype=torch.float32).reshape(-1)
    wav, mask = batch_audio([wave])  # normalized as in training: (1, S)
    tokens, _, frames, _ = model.encode_audio(wav.to(device, model.projector_dtype), mask.to(device))
    frames = frames[0].to(model.projector_dtype)  # (F, Ce): one utterance, no padding, so no masks needed
    stages = {"frames": frames, **projector_stages(model.projector, frames)}
    tol = 1e-3 if model.projector_dtype == torch.float32 else 3e-2  # bf16/fp16 keep ~3 significant digits
    if not torch.allclose(stages["tokens"].float(), tokens[0].float(), rtol=tol, atol=tol):
        raise RuntimeError("projector_stages no longer reproduces AudioProjector.forward: update visualize.py")
    stages["tokens"] = tokens[0]  # report the model's own output

    k = model.projector.config.stack
    frame_hop = model.encoder.config.hop_length / SAMPLE_RATE  # 20 ms (the encoder's config knows its stride)
    token_hop = k * frame_hop  # 100 ms at k = 5
    emb = model.decoder.model.embed_tokens.weight  # (V, Cd)
    allowed = text_token_ids(model).to(emb.device)
    ids, cos, norms = compare_with_text(tokens[0], emb, allowed, top_k)
    text_norms = norms[allowed].cpu()  # (V',)
    p5, p50, p95 = torch.quantile(text_norms, torch.tensor([0.05, 0.5, 0.95])).tolist()
    return {
        "waveform": wave, "sample_rate": SAMPLE_RATE, "stack": k, "seconds_per_token": token_hop,
        "norms": {s: x.float().norm(dim=-1).cpu() for s, x in stages.items()},
        "shapes": {s: tuple(x.shape) for s, x in stages.items()},
        "labels": {s: label + (f" (k={k})" if s == "stacked" else "") for s, label, _ in STAGES},
        "hop": {s: frame_hop if step == "frame" else token_hop for s, _, step in STAGES},
        "text_norm": {"p5": p5, "p50": p50, "p95": p95, "mean": text_norms.mean().item(),
                      "std": text_norms.std(correction=0).item(), "count": len(text_norms)},
        "nearest_ids": ids.cpu(), "nearest_cosine": cos.float().cpu(),
        "nearest_tokens": [[token_string(model.tokenizer, i) for i in row] for row in ids.tolist()],
    }


def summary(stats: dict) -> str:
    """A few lines of text: each stage's shape and mean norm, the text-embedding norms, the top-1 neighbours."""
    lines = [f"{'stage':<32} {'shape':<14} L2 norm mean +- std"]
    for s, _, _ in STAGES:
        n = stats["norms"][s]
        shape = str(stats["shapes"][s])
        lines.append(f"{stats['labels'][s]:<32} {shape:<14} {n.mean():.4g} +- {n.std(correction=0):.3g}")
    t = stats["text_norm"]
    lines.append(f"{'text embeddings':<32} {str((t['count'], stats['shapes']['tokens'][1])):<14} median "
                 f"{t['p50']:.4g}, 5-95%: {t['p5']:.4g}-{t['p95']:.4g}")
    ratio = stats["norms"]["tokens"].mean().item() / t["p50"]
    lines.append(f"audio tokens / median text embedding norm: {ratio:.3g}x")
    top1 = stats["nearest_cosine"][:, 0]
    words = " ".join(repr(row[0]) for row in stats["nearest_tokens"][:12])
    more = " ..." if len(stats["nearest_tokens"]) > 12 else ""
    lines.append(f"nearest text token per audio token (top-1 cosine mean {top1.mean():.3f}): {words}{more}")
    return "\n".join(lines)


# -----------------------------------------------------------------------------
# the drawing


def pyplot():
    """matplotlib.pyplot with a file-only backend, or a one-line NanoaudioError saying how to get it."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display needed: we only write files
        import matplotlib.pyplot as plt
    except ImportError:
        raise NanoaudioError("matplotlib is not installed: pip install 'nanoaudio[viz]'") from None
    return plt


def plot_projection(stats: dict, path, title: str | None = None) -> None:
    """Draw the figure described in the module docstring from projection_stats' output into `path` (PNG, or
    PDF/SVG/JPG by its suffix)."""
    plt = pyplot()
    wave, sr = stats["waveform"], stats["sample_rate"]
    seconds = len(wave) / sr
    ids, cos, words = stats["nearest_ids"], stats["nearest_cosine"], stats["nearest_tokens"]
    N, K = ids.shape
    hop = stats["seconds_per_token"]
    # ~1.3 inch per second keeps one rotated label per 100 ms token column readable
    width = min(60.0, max(9.0, 2.0 + 1.3 * N * hop))
    fig, (ax_w, ax_n, ax_t) = plt.subplots(3, 1, sharex=True, figsize=(width, 5.5 + 0.6 * K),
                                           gridspec_kw={"height_ratios": [1, 3, 0.6 * K]})

    ax_w.plot(torch.arange(len(wave)) / sr, wave, lw=0.5, color="0.3")
    ax_w.set_ylabel("waveform")
    ax_w.set_title(title or f"the projection of {seconds:.2f} s of audio, stack k={stats['stack']}")

    t = stats["text_norm"]
    ax_n.axhspan(t["p5"], t["p95"], color="tab:gray", alpha=0.25,
                 label=f"text embeddings 5-95% ({t['p5']:.3g}-{t['p95']:.3g}, {t['count']} tokens)")
    ax_n.axhline(t["p50"], color="tab:gray", ls="--", label=f"text embeddings median {t['p50']:.3g}")
    for s, _, _ in STAGES:
        n, h = stats["norms"][s], stats["hop"][s]
        x = (torch.arange(len(n)) + 0.5) * h  # the centre of the time span each vector stands for
        ax_n.plot(x, n, marker="." if h > 0.05 else None, ms=3, lw=1,
                  label=f"{stats['labels'][s]} {stats['shapes'][s]}: {n.mean():.3g} +- {n.std(correction=0):.2g}")
    ratio = stats["norms"]["tokens"].mean().item() / t["p50"]
    ax_n.set_yscale("log")
    ax_n.set_ylabel("L2 norm per vector")
    ax_n.set_title(f"(a) norms: the audio tokens are {ratio:.3g}x the median text embedding", fontsize=10)
    ax_n.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.005, 0.5))
    ax_n.grid(alpha=0.3, which="both")

    # (b) one column per audio token, one row per rank: colour = cosine, text = the token
    im = ax_t.imshow(cos.T, aspect="auto", cmap="viridis", origin="upper", extent=(0, N * hop, K, 0),
                     interpolation="nearest")
    mid = (cos.max() + cos.min()).item() / 2
    for j in range(N):
        for r in range(K):
            label = words[j][r].replace(" ", "\u2423")[:LABEL_CHARS]  # a visible space: " the" -> "\u2423the"
            ax_t.text((j + 0.5) * hop, r + 0.5, label, rotation=90, ha="center", va="center", fontsize=6,
                      color="white" if cos[j, r] < mid else "black")
    ax_t.set_yticks([r + 0.5 for r in range(K)], [f"top {r + 1}" for r in range(K)])
    ax_t.set_xlabel("time (s)")
    ax_t.set_title(f"(b) nearest text tokens by cosine (top-1 mean {cos[:, 0].mean():.3f})", fontsize=10)
    # the colorbar sits outside the axes (an inset), so (b) keeps the same time axis width as the panels above
    fig.colorbar(im, cax=ax_t.inset_axes([1.005, 0, 0.012, 1]), label="cosine")
    ax_t.set_xlim(0, max(seconds, N * hop))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# -----------------------------------------------------------------------------
# command line


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("audio", help="an audio file (any format and sample rate soundfile reads)")
    p.add_argument("--checkpoint", default=None, help="checkpoint folder written by train.py (default: bundled tiny)")
    p.add_argument("-o", "--output", default="projection.png", type=output_file(*IMAGE_SUFFIXES),
                   help=f"where to write the figure ({', '.join(IMAGE_SUFFIXES)})")
    p.add_argument("--top-k", type=positive_int, default=TOP_K, help="nearest text tokens shown per audio token")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    p.add_argument("--dtype", default=None, choices=list(DTYPES), help="default: float32")
    return p.parse_args(argv)


def main(argv=None) -> int:
    from nanoaudio.audio import load_audio
    from nanoaudio.load import parse_dtype
    from nanoaudio.model import ASRModel

    args = parse_args(argv)  # numbers, -o's folder and suffix, --dtype: checked here, before any compute
    try:
        pyplot()  # fail before loading a model that may take minutes
        check_device(args.device)
        wave = load_audio(args.audio)
        ckpt = Path(args.checkpoint) if args.checkpoint else BUNDLED
        if args.checkpoint is None and not BUNDLED.is_dir():
            raise NanoaudioError(f"{BUNDLED}: no bundled tiny model in this install; pass --checkpoint")
        model = ASRModel.load(ckpt, dtype=parse_dtype(args.dtype), device=args.device)
        stats = projection_stats(model, wave, args.top_k)
        print(f"{args.audio}: {len(wave) / SAMPLE_RATE:.2f} s, checkpoint {ckpt}")
        print(summary(stats))
        plot_projection(stats, args.output, title=f"{Path(args.audio).name}: {len(wave) / SAMPLE_RATE:.2f} s "
                        f"through {ckpt.name} (k={stats['stack']})")
        print(f"wrote {args.output}")
    except NanoaudioError as e:  # (here as well as in run_cli: the tests call main() and read its status)
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    from nanoaudio.cli import run_cli

    run_cli(main)  # Ctrl-C: a quiet exit 130
