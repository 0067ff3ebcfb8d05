"""Build the byte-level BPE tokenizer of the bundled GPT-2 decoders (assets/tokenizer-bpe/).

Why: the decoder family needs a GPT-2 style tokenizer, and the project works offline, so it
ships one trained on the bundled corpus's training split only (the match and eval splits stay
unseen). Byte-level BPE has no unknown token; `<|endoftext|>` is its single special token,
used as beginning/end of text and as padding, as in GPT-2.

Run (deterministic: the same train.txt gives the same files)::

    python assets/build_bpe_tokenizer.py [--train assets/corpus/train.txt] [--out assets/tokenizer-bpe]
"""

import argparse
import json
import os

VOCAB_SIZE = 4096
EOT = "<|endoftext|>"
HERE = os.path.dirname(os.path.abspath(__file__))


def train_tokenizer(train_txt, out_dir):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import AutoTokenizer, GPT2TokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=[EOT],  # id 0
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # all 256 bytes: any text encodes
        show_progress=False,
    )
    tok.train([train_txt], trainer)
    assert tok.token_to_id(EOT) == 0
    fast = GPT2TokenizerFast(
        tokenizer_object=tok, bos_token=EOT, eos_token=EOT, unk_token=EOT, pad_token=EOT,
        add_prefix_space=False, model_max_length=128,
    )
    fast.save_pretrained(out_dir)

    # The saved tokenizer must load back with the trained vocabulary and merges (transformers
    # rebuilds the BPE model, spelling unset affixes "" instead of null) and round-trip text.
    loaded = AutoTokenizer.from_pretrained(out_dir)
    model, trained = (json.loads(t.to_str())["model"] for t in (loaded.backend_tokenizer, tok))
    assert (model["vocab"], model["merges"]) == (trained["vocab"], trained["merges"])
    with open(train_txt, encoding="utf-8") as f:
        sample = [next(f).rstrip("\n") for _ in range(200)]
    assert [e.ids for e in loaded.backend_tokenizer.encode_batch(sample)] == [e.ids for e in tok.encode_batch(sample)]
    text = "In the beginning God created the heaven and the earth. — Ünïcode too"
    ids = loaded(text)["input_ids"]
    assert EOT not in loaded.convert_ids_to_tokens(ids), ids
    assert loaded.decode(ids) == text
    assert loaded.eos_token_id == loaded.pad_token_id == loaded.bos_token_id == 0
    return loaded


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--train", default=os.path.join(HERE, "corpus", "train.txt"))
    parser.add_argument("--out", default=os.path.join(HERE, "tokenizer-bpe"))
    args = parser.parse_args()
    tok = train_tokenizer(args.train, args.out)
    print(f"saved {args.out}: {len(tok)} tokens")


if __name__ == "__main__":
    main()
