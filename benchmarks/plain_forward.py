"""The whole-run yardstick: only the forward passes an align run cannot avoid, as a process.

    python -m benchmarks.plain_forward MODEL_A MODEL_B [--match-tokens N] [--eval-tokens N] [--lambdas N]

Loads both models (float32, as permerge does) and the tokenizer, tokenises the bundled
matching and evaluation text into the same batches permerge uses, and runs: both encoders
over the matching tokens, then one masked-LM pass (encoder + MLM head at the masked
positions) per interior λ point of each curve plus the two endpoints, i.e. 2·(λ−2)+2
passes. No statistics, matching, permuting, interpolation, loss or report.

Only `permerge_core.data` is imported (not the package, whose __init__ pulls in the whole
pipeline and scipy), so this process pays no import cost that the work does not need.
"""

from __future__ import annotations

import argparse
import sys
import time
import types
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _data_module():
    if "permerge_core" not in sys.modules:  # a bare package: no __init__ side effects
        pkg = types.ModuleType("permerge_core")
        pkg.__path__ = [str(REPO / "permerge_core")]
        sys.modules["permerge_core"] = pkg
    import permerge_core.data as data

    return data


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.plain_forward")
    parser.add_argument("model_a")
    parser.add_argument("model_b")
    parser.add_argument("--tokenizer", default=None)
    parser.add_argument("--match-tokens", type=int, default=65536)
    parser.add_argument("--eval-tokens", type=int, default=16384)
    parser.add_argument("--lambdas", type=int, default=11)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--mask-seed", type=int, default=0)
    parser.add_argument("--eval-packing", choices=("blocks", "lines"), default="blocks", help="as align's (its default: blocks)")
    args = parser.parse_args(argv)

    import torch
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    data = _data_module()
    start = time.perf_counter()
    model_a = AutoModelForMaskedLM.from_pretrained(args.model_a, dtype=torch.float32).eval()
    model_b = AutoModelForMaskedLM.from_pretrained(args.model_b, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(args.tokenizer or args.model_a)
    batches = data.tokenize(tok, data.read_passages(data.DEFAULT_MATCH_DATA), args.match_tokens, args.max_length, args.batch_size)
    eval_batches = data.tokenize(tok, data.read_passages(data.DEFAULT_EVAL_DATA), args.eval_tokens, args.max_length, args.batch_size, packing=args.eval_packing)
    masked = data.masked_batches(eval_batches, tok, model_a.config.vocab_size, seed=args.mask_seed)
    loaded = time.perf_counter()
    mlm_head = getattr(model_a, "cls", None) or model_a.lm_head  # BERT: cls, RoBERTa: lm_head
    with torch.no_grad():
        for ids, mask in batches:
            model_a.base_model(input_ids=ids, attention_mask=mask)
            model_b.base_model(input_ids=ids, attention_mask=mask)
        encoders = time.perf_counter()
        passes = 2 * (args.lambdas - 2) + 2
        for _ in range(passes):
            for b in masked:
                hidden = model_a.base_model(input_ids=b.input_ids, attention_mask=b.attention_mask).last_hidden_state
                mlm_head(hidden[b.positions])
    done = time.perf_counter()
    print(f"load+tokenise {loaded - start:.2f} s, encoders {encoders - loaded:.2f} s, {passes} masked-LM passes {done - encoders:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
