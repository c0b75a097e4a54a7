"""Fake of open_clip/tokenizer.py: `SimpleTokenizer` and the module-level `_tokenizer` that the
WebUI's SD2 prompt code uses (`open_clip.tokenizer._tokenizer`, modules/sd_hijack_open_clip.py).

Same attributes as the real one: `encoder` (token -> id), `decoder` (id -> token), `bpe_ranks`
((first, second) -> merge rank), `vocab_size`, `all_special_ids`, `encode(text)` (no `decode`). Its ids are laid
out like the real one: the 256 byte symbols, the same with '</w>', one token per merge, then
'<start_of_text>' and '<end_of_text>'.

The real one reads CLIP's 49,408-token BPE file from its wheel, which is not here: by default the
fake has NO merges, so its vocabulary is 514 ids (the vocabulary of the project's tiny test
models, whose start/end ids are 512/513). Tokenization follows the real rules (lowercase,
whitespace collapsed, words split off, bytes -> unicode symbols, '</w>' on a word's last symbol,
merges by rank) except that ftfy is not applied and the split uses `re` instead of `regex`.
"""
import re

START, END = "<start_of_text>", "<end_of_text>"


def bytes_to_unicode() -> dict:
    """byte -> printable unicode symbol: printable Latin-1 bytes map to themselves, the other
    bytes to code points from 256 upwards (the mapping every CLIP BPE vocabulary uses). The order
    matters, it sets the ids: the printable bytes first ('!' is id 0), then the others."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in keep}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


_WORDS = re.compile(r"<start_of_text>|<end_of_text>|'s|'t|'re|'ve|'m|'ll|'d|[^\W\d_]+|\d|(?:[^\s\w]|_)+",
                    re.IGNORECASE)


class SimpleTokenizer:
    def __init__(self, merges=()):
        self.byte_encoder = bytes_to_unicode()
        symbols = list(self.byte_encoder.values())
        merges = [tuple(m) for m in merges]
        vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges] + [START, END]
        self.encoder = {tok: i for i, tok in enumerate(vocab)}
        self.decoder = {i: tok for tok, i in self.encoder.items()}
        self.bpe_ranks = {m: i for i, m in enumerate(merges)}
        self.vocab_size = len(self.encoder)
        self.all_special_ids = [self.encoder[START], self.encoder[END]]

    def bpe(self, word: str) -> list:
        parts = list(word[:-1]) + [word[-1] + "</w>"]
        while len(parts) > 1:
            ranked = [(self.bpe_ranks.get(pair, None), i) for i, pair in enumerate(zip(parts, parts[1:]))]
            ranked = [(r, i) for r, i in ranked if r is not None]
            if not ranked:
                break
            _, i = min(ranked)
            parts[i:i + 2] = [parts[i] + parts[i + 1]]
        return parts

    def encode(self, text: str) -> list:
        text = re.sub(r"\s+", " ", text).strip().lower()
        ids = []
        for word in _WORDS.findall(text):
            if word in (START, END):
                ids.append(self.encoder[word])
                continue
            symbols = "".join(self.byte_encoder[b] for b in word.encode("utf-8"))
            ids.extend(self.encoder[p] for p in self.bpe(symbols))
        return ids


_tokenizer = SimpleTokenizer()
