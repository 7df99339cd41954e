#!/usr/bin/env python3
"""Generate the tokenizer reference fixtures under tests/fixtures/tok/.

Run from the repository root:   pip install tokenizers==0.23.2 && python3 tests/gen/gen_tok_fixtures.py

Everything the C tests compare against is produced here by Hugging Face `tokenizers`
(the Rust library behind transformers' fast tokenizers), so the C code is checked against
the reference implementation and never against itself.  Outputs:

  tests/fixtures/tok/tiny_hard.json      hard texts x the bundled models/tiny-nemotron-h tokenizer
  tests/fixtures/tok/calib_ref.json      token count + FNV-1a hash of the whole calib.txt
  tests/fixtures/tok/nemotron_style.json a small BPE trained here with the structure of
                                         NVIDIA's Nemotron-H / Nemotron 3 tokenizer.json
                                         (Tekken-style Split regex + ByteLevel without regex,
                                         TemplateProcessing "<s> $A", ByteLevel decoder,
                                         1000-style <SPECIAL_k> added tokens, list-form merges)
  tests/fixtures/tok/variants_ref.json   patches applied on top of nemotron_style.json
                                         (other pre-tokenizers, Split behaviours, added-token
                                         flags, post-processors, string-form merges,
                                         ignore_merges) with the ids HF produced for each
  tests/fixtures/tok/handmade_ref.json   a hand-written tiny char-level BPE exercising
                                         unk_token / fuse_unk / byte_fallback /
                                         continuing_subword_prefix / end_of_word_suffix
"""
import json
import os
import sys

import tokenizers
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "tests", "fixtures", "tok")

# Nemotron-H / Nemotron 3 (like Mistral NeMo, whose "Tekken" tokenizer it shares) split regex:
# single digits, case-aware letter runs, no contraction alternatives.
TEKKEN = (r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|"
          r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|"
          r"\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")
CL100K = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
          r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")

MULTILINGUAL = (
    "Добро пожаловать в Москву. Ελληνικά γράμματα και λέξεις. مرحبا بالعالم العربي. "
    "שלום עולם. नमस्ते दुनिया, यह हिंदी है। สวัสดีชาวโลก ภาษาไทย. 日本語のテキストと漢字。"
    "中文文本，汉字和标点。한국어 텍스트입니다. Ünïcödé café naïve façade jalapeño. "
    "Emoji 🙂😀👍🏽👨‍👩‍👧 🇫🇷🇯🇵 ✅ ❤️. Numbers 3.14159 1,000,000 ½ ² Ⅻ ٣٤٥ ४५६. "
)


def hard_texts():
    t = [
        "", " ", "  ", "\t", "\n", "\r\n", "\n\n\n", " \n \n", "a", "A", "0",
        "Hello world", " Hello world", "Hello  world", "Hello world ", "Hello world  ",
        "Hello\tworld\t\t", "Hello\r\nworld\r\n\r\n", "line1\nline2\n\nline4\n",
        "trailing spaces   \nnext", "    indented code\n        more\n",
        " " * 40 + "x", "x" + " " * 41, "\t" * 17 + "y", " \t \t\n\t \r\n  \r\r\r z",
        "\n" * 25, " " * 100,
        # digits of many lengths
        " ".join("7" * k for k in range(1, 21)),
        "1234567890123456789012345678901234567890",
        "3.14159 2,718,281 -42 +7 1e-9 0x1F 0b1010 1_000_000 12:30:45 2024-01-31",
        "٠١٢٣٤٥٦٧٨٩ ०१२३४५६७८९ ½¼¾ ²³ ⅫⅣ ①②③ 𝟘𝟙𝟚",
        # contractions and apostrophes
        "don't won't I'm you're we've they'll he'd it's",
        "DON'T WON'T I'M YOU'RE WE'VE THEY'LL HE'D IT'S",
        "Don'T 'S 'LL 'Ll 'lL 've 'VE 'd 'D 're 'Re x's",
        "rock 'n' roll, 'quoted', ''double'', '''triple'''",
        "it’s don’t — curly ‘quotes’ and “double”",
        "'s's's's 's",
        # punctuation runs and code
        "!!!!!!?????......------======```````\"\"\"\"",
        "def f(x):\n    return x**2  # comment\n",
        "if (a && b || !c) { x->y[i] += 0x7f; }",
        "path/to/file.txt C:\\Windows\\System32 https://example.com/a?b=c&d=e#f",
        "<html><body class=\"x\">Hi</body></html>",
        "a/b//c///d////e /x/ //",
        "email@example.com @user #tag $100 50% ^caret~tilde |pipe|",
        # mixed scripts
        "Добро пожаловать! Привет, мир.",
        "Ελληνικά: αβγ ΑΒΓ ΣΊΣΥΦΟΣ",
        "مرحبا بالعالم 123 عربي",
        "שלום עולם",
        "नमस्ते दुनिया",
        "สวัสดีชาวโลก",
        "日本語のテキスト、カタカナとひらがな。",
        "中文文本，汉字。",
        "한국어 텍스트입니다",
        "mixedСкриптsΑλφαβητος日本abc",
        "CamelCaseWordsAndHTTPServerXMLParser iPhone eBay McDonald",
        "ÀÉÎÕÜ àéîõü ÆØÅ æøå ß ẞ ŁŚŻ łśż",
        # combining marks, zero-width, odd spaces
        "e\u0301 a\u0308 o\u0302\u0323 Z\u0351\u0352\u0353a\u0354\u0355l\u0356g\u0357o",
        "\u0301\u0302 leading combining",
        "zero\u200bwidth\u200cnon\u200djoiner\ufeffbom",
        "nbsp\u00a0here\u00a0\u00a0two  x",
        "nel\u0085line\u0085\u0085x \u0085 y",
        "ideographic\u3000space\u3000\u3000x",
        "line\u2028sep\u2029para",
        "mongolian\u180evowel \u180e \u180e\u180e x",
        "ogham\u1680space thin\u2009space em\u2003space",
        "ctrl\x01\x02\x1b[0m\x7f\x1c\x1d\x1e\x1f end",
        "vt\x0bff\x0cx",
        "nul\x00byte\x00\x00end",
        # emoji
        "emoji 🙂😀👍🏽 family 👨‍👩‍👧 flags 🇫🇷🇯🇵 keycap 1️⃣ ❤️ ✅",
        "🙂" * 12,
        "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝐁𝐨𝐥𝐝 astral 𠀀𠀁",
        # special tokens inside text
        "<s>", "</s>", "<s>Hello</s>", "<s> Hello </s>", "Hello<s>world</s>!",
        "<unk><pad><s></s>", "<s<s>>", "</s></s></s>", "<s>\n</s>\n", "x <s>", "<S> </S> < s>",
        # long words
        "a" * 300, "ab" * 150, "supercalifragilisticexpialidocious " * 5,
        "pneumonoultramicroscopicsilicovolcanoconiosis",
    ]
    return t


def write(name, obj):
    path = os.path.join(OUT, name)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=True, indent=None, separators=(",", ":"))
        f.write("\n")
    print("wrote", path, os.path.getsize(path), "bytes")


def fnv1a64_ids(ids):
    h = 0xcbf29ce484222325
    for i in ids:
        for b in int(i).to_bytes(4, "little"):
            h ^= b
            h = (h * 0x100000001b3) & 0xFFFFFFFFFFFFFFFF
    return h


def nul_if(value, same):
    return None if value == same else value


def cases_for(tok, texts):
    out = []
    for s in texts:
        with_sp = tok.encode(s, add_special_tokens=True).ids
        without = tok.encode(s, add_special_tokens=False).ids
        out.append({
            "text": s,
            "ids": without,
            "ids_special": with_sp,
            # null where the decoded text is just the input (most cases), to keep the file small
            "decoded": nul_if(tok.decode(without, skip_special_tokens=False), s),
            "decoded_skip": nul_if(tok.decode(with_sp, skip_special_tokens=True), s),
        })
    return out


def train_nemotron_style():
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(TEKKEN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    specials = ["<unk>", "<s>", "</s>"] + [f"<SPECIAL_{i}>" for i in range(3, 10)] + \
               ["<|im_start|>", "<|im_end|>", "<think>", "</think>"] + \
               [f"<SPECIAL_{i}>" for i in range(14, 20)]
    trainer = trainers.BpeTrainer(vocab_size=1500, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    with open(os.path.join(ROOT, "tests", "fixtures", "calib.txt"), encoding="utf-8") as f:
        calib = f.read()
    tok.train_from_iterator([calib[:150000], MULTILINGUAL * 20], trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)])
    return json.loads(tok.to_str())


def variants(base):
    """Each variant: a name and a dict of top-level/model keys replacing those of base."""
    v = []
    bl = lambda aps, regex, trim=True: {"type": "ByteLevel", "add_prefix_space": aps,
                                        "trim_offsets": trim, "use_regex": regex}
    tp = lambda single, sp: {"type": "TemplateProcessing", "single": single, "pair": single,
                             "special_tokens": sp}
    S = lambda i: {"SpecialToken": {"id": i, "type_id": 0}}
    A = {"Sequence": {"id": "A", "type_id": 0}}
    spmap = {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]},
             "</s>": {"id": "</s>", "ids": [2], "tokens": ["</s>"]},
             "<think>": {"id": "<think>", "ids": [12, 13], "tokens": ["<think>", "</think>"]}}
    # GPT-2 style: ByteLevel does the splitting itself with its built-in regex, prefix space.
    v.append(("gpt2_bytelevel_regex", {
        "pre_tokenizer": bl(True, True),
        "post_processor": {"type": "Sequence", "processors": [
            bl(True, True, False), tp([S("<s>"), A, S("</s>")], spmap)]},
        "merges_as_strings": True, "model": {"ignore_merges": True}}))
    v.append(("bytelevel_regex_no_prefix", {"pre_tokenizer": bl(False, True), "post_processor": None}))
    v.append(("bytelevel_prefix_after_split", {
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": TEKKEN}, "behavior": "Isolated", "invert": False},
            bl(True, False)]}}))
    v.append(("llama3_cl100k", {
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": CL100K}, "behavior": "Isolated", "invert": False},
            bl(False, False)]},
        "post_processor": {"type": "Sequence", "processors": [
            bl(True, True, False), tp([S("<s>"), A], spmap)]}}))
    v.append(("template_multi_id", {"post_processor": tp([S("<think>"), A, S("</s>")], spmap)}))
    v.append(("roberta_processing", {"post_processor": {
        "type": "RobertaProcessing", "sep": ["</s>", 2], "cls": ["<s>", 1],
        "trim_offsets": True, "add_prefix_space": False}}))
    v.append(("bert_processing", {"post_processor": {
        "type": "BertProcessing", "sep": ["</s>", 2], "cls": ["<|im_start|>", 10]}}))
    v.append(("no_post_processor_ignore_merges", {"post_processor": None, "model": {"ignore_merges": True}}))
    for pat in ({"String": " "}, {"String": "ab"}, {"Regex": r"\d+"}, {"Regex": r"x*"},
                {"Regex": r"\s+"}, {"Regex": r"[aeiou]|$"}, {"Regex": r"^\w+"}, {"Regex": r"\h+|\S\W"},
                {"Regex": r"[\s\w]+"}):
        for behavior in ("Removed", "Isolated", "MergedWithPrevious", "MergedWithNext", "Contiguous"):
            for invert in (False, True):
                name = "split_%s_%s_%s" % (list(pat.values())[0], behavior, "inv" if invert else "noinv")
                v.append((name, {"pre_tokenizer": {"type": "Sequence", "pretokenizers": [
                    {"type": "Split", "pattern": pat, "behavior": behavior, "invert": invert},
                    bl(False, False)]}, "post_processor": None}))
    v.append(("split_bare_not_in_sequence", {"pre_tokenizer": {
        "type": "Split", "pattern": {"Regex": r"\w+|[^\w\s]+"}, "behavior": "Isolated", "invert": False}}))
    v.append(("no_pre_tokenizer", {"pre_tokenizer": None}))
    # Added-token flags.  ids continue after the trained vocabulary.
    n = len(base["model"]["vocab"])
    extra = [
        {"content": "<mask>", "lstrip": True, "rstrip": False, "single_word": False, "normalized": False, "special": True},
        {"content": "[R]", "lstrip": False, "rstrip": True, "single_word": False, "normalized": False, "special": True},
        {"content": "[LR]", "lstrip": True, "rstrip": True, "single_word": False, "normalized": False, "special": False},
        {"content": "foo", "lstrip": False, "rstrip": False, "single_word": True, "normalized": True, "special": False},
        {"content": "bar", "lstrip": False, "rstrip": False, "single_word": True, "normalized": False, "special": False},
        {"content": "café", "lstrip": False, "rstrip": False, "single_word": False, "normalized": False, "special": False},
        {"content": "日本", "lstrip": False, "rstrip": False, "single_word": False, "normalized": True, "special": False},
        {"content": "ab", "lstrip": False, "rstrip": False, "single_word": False, "normalized": True, "special": False},
        {"content": "abc", "lstrip": False, "rstrip": False, "single_word": False, "normalized": True, "special": False},
        {"content": "  ", "lstrip": False, "rstrip": False, "single_word": False, "normalized": False, "special": False},
        {"content": "é", "lstrip": False, "rstrip": False, "single_word": False, "normalized": False, "special": True},
    ]
    for i, t in enumerate(extra):
        t["id"] = n + i
    v.append(("added_token_flags", {"added_tokens": base["added_tokens"] + extra}))
    return v


ADDED_TEXTS = [
    "x <mask> y", "x   <mask>y", "<mask><mask>", " \t<mask>", "a[R]   b", "[R]\n\nz", "a  [LR]  b",
    "foo bar", "foobar", "xfoo", "foo.", "(foo)", "foo_bar", "éfoo", "bar!bar bar",
    "un café noir", "cafécafé", "日本語 日本", "abcd ab abc abab", "a  b   c    d",
    "<s>é</s>", "é", "e\u0301", "<think>x</think>", "<s><mask></s>",
]

SPLIT_TEXTS = [
    "", "a b  c   d", "  lead and trail  ", "ab cab abab", "x1 22 333 4444", "xx x xxx yxz",
    "aeiou end", "Hello world. Quo vadis?", "tab\tnew\nline", "ünïcödé words 日本 123",
    # where Oniguruma's \s \w \h differ from PCRE2's: U+180E, NEL, No/Nl numbers, circled
    # letters, connector punctuation, hex digits
    "x\u180ey \u180e z\u0085w \u00a0v", "²Ⓐ‿_Ⅻ½ 0xBEEF cafe\u0301", "line1\nline2\n\nend\n",
]


def apply_variant(base, patch):
    d = json.loads(json.dumps(base))
    for k, val in patch.items():
        if k == "model":
            d["model"].update(val)
        elif k == "merges_as_strings":
            d["model"]["merges"] = [a + " " + b for a, b in d["model"]["merges"]]
        else:
            d[k] = val
    return d


def handmade():
    """Char-level BPE without ByteLevel: exercises unk / fuse_unk / byte_fallback / affixes."""
    chars = list("abcdefghijklmnopqrstuvwxyz")
    out = []
    texts = ["hello world", "héllo wörld", "日本 abc", "zzz qqq", "abc!?", "", "a", "ab ba abab",
             "xyz\u00e9\u00e9\u00e9", "emoji 🙂 done"]
    configs = []
    for byte_fallback in (False, True):
        for unk in (None, "<unk>"):
            for fuse in (False, True):
                configs.append(("plain", byte_fallback, unk, fuse, None, None))
    configs.append(("affix", False, "<unk>", False, "##", None))
    configs.append(("affix", False, "<unk>", True, None, "</w>"))
    configs.append(("affix", True, "<unk>", False, "##", "</w>"))
    for kind, byte_fallback, unk, fuse, prefix, suffix in configs:
        vocab = {"<unk>": 0, "<s>": 1}
        def add(t):
            if t not in vocab:
                vocab[t] = len(vocab)
        for c in chars:
            add(c)
            if prefix:
                add(prefix + c)
            if suffix:
                add(c + suffix)
                if prefix:
                    add(prefix + c + suffix)
        for b in range(256):
            if b % 3 != 0:  # leave holes so byte_fallback sometimes fails over to unk
                add("<0x%02X>" % b)
        merges = []
        p = prefix or ""
        s = suffix or ""

        def merge(a, b):
            # HF builds the merged token as a + b without b's continuing-subword prefix.
            add(a + b[len(p):])
            merges.append([a, b])
        merge("a", p + "b")
        merge("h", p + "e")
        merge(p + "l", p + "l")
        merge("he", p + "ll")
        merge(p + "l", p + "o" + s)
        merge("w", p + "o")
        merge("x", p + "y")
        model = {"type": "BPE", "dropout": None, "unk_token": unk, "continuing_subword_prefix": prefix,
                 "end_of_word_suffix": suffix, "fuse_unk": fuse, "byte_fallback": byte_fallback,
                 "ignore_merges": False, "vocab": vocab, "merges": merges}
        d = {"version": "1.0", "truncation": None, "padding": None,
             "added_tokens": [{"id": 1, "content": "<s>", "single_word": False, "lstrip": False,
                               "rstrip": False, "normalized": False, "special": True}],
             "normalizer": None,
             "pre_tokenizer": {"type": "Split", "pattern": {"Regex": r"\s+"}, "behavior": "Removed", "invert": False},
             "post_processor": None, "decoder": None, "model": model}
        tok = Tokenizer.from_str(json.dumps(d))
        cases = [{"text": t, "ids": tok.encode(t, add_special_tokens=False).ids} for t in texts]
        out.append({"tokenizer": d, "cases": cases,
                    "decode_ids": cases[0]["ids"], "decoded": tok.decode(cases[0]["ids"])})
    return out


def main():
    if tokenizers.__version__ != "0.23.2":
        print("warning: fixtures were made with tokenizers 0.23.2, this is", tokenizers.__version__,
              file=sys.stderr)
    os.makedirs(OUT, exist_ok=True)
    texts = hard_texts()

    tiny = Tokenizer.from_file(os.path.join(ROOT, "models", "tiny-nemotron-h", "tokenizer.json"))
    write("tiny_hard.json", {"tokenizers_version": tokenizers.__version__, "cases": cases_for(tiny, texts)})

    with open(os.path.join(ROOT, "tests", "fixtures", "calib.txt"), "rb") as f:
        calib = f.read().decode("utf-8")
    ids = tiny.encode(calib, add_special_tokens=False).ids
    write("calib_ref.json", {"tokenizers_version": tokenizers.__version__, "count": len(ids),
                             "fnv1a64": "%016x" % fnv1a64_ids(ids),
                             "first": ids[:64], "last": ids[-64:]})

    base = train_nemotron_style()
    with open(os.path.join(OUT, "nemotron_style.json"), "w", encoding="utf-8") as f:
        json.dump(base, f, ensure_ascii=False, indent=1)
        f.write("\n")
    nem = Tokenizer.from_file(os.path.join(OUT, "nemotron_style.json"))
    chat = "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n<think>\n4</think>Four.<|im_end|>"
    vout = [{"name": "nemotron_style", "patch": {}, "cases": cases_for(nem, texts + [chat, MULTILINGUAL])}]
    for name, patch in variants(base):
        d = apply_variant(base, patch)
        tok = Tokenizer.from_str(json.dumps(d))
        if name.startswith("split_") or name in ("no_pre_tokenizer",):
            vt = SPLIT_TEXTS
        elif name == "added_token_flags":
            vt = ADDED_TEXTS + SPLIT_TEXTS
        else:
            vt = texts + SPLIT_TEXTS + ADDED_TEXTS
        vout.append({"name": name, "patch": patch, "cases": cases_for(tok, vt)})
    write("variants_ref.json", {"tokenizers_version": tokenizers.__version__, "variants": vout})
    write("handmade_ref.json", {"tokenizers_version": tokenizers.__version__, "tokenizers": handmade()})


if __name__ == "__main__":
    main()
