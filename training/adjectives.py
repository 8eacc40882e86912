"""Adjectives in the judge's rationales, decided by WordNet 3.0 rather than a hand-written word list.

The paper's Fig. 5 counts the most common adjectives in rationales of clicked
and not-clicked images. Whether a word is an adjective comes from WordNet's
adjective index (Debian/Ubuntu package ``wordnet-base``, files under
``/usr/share/wordnet``) read through NLTK's own WordNet reader; NLTK's
downloader cannot be used offline, so we read the distribution's copy.

Rule, applied per token (lower-cased words and hyphenated compounds, 3+ letters):
the token counts when WordNet's ``morphy`` finds an adjective lemma for it
(synset type ``a`` or satellite ``s``; ``clearer`` -> ``clear``; a hyphenated
compound WordNet lacks falls back to its head, ``well-lit`` -> ``lit``), unless the
word is far more often an adverb in WordNet's SemCor tag counts (``well``,
``very``, ``only``, ``more``, ``most``: "well lit" is not praise of a well).
Words that are also nouns or verbs (``white``, ``clean``, ``blurred``) are
counted, because in a rationale about a photo they are nearly always
modifiers; each counted lemma is marked ``adjective_only`` or not so the
report can say which were ambiguous.
"""
from __future__ import annotations

import io
import os
import re
import warnings
from collections import Counter
from collections.abc import Iterable
from functools import lru_cache

DEFAULT_WORDNET_DIR = "/usr/share/wordnet"
INSTALL_HINT = "sudo apt-get install -y wordnet-base"
_TOKEN = re.compile(r"[a-z]+(?:-[a-z]+)*")
# "Visual impact: ..." — the criterion headings a judge's rationale is organised under are
# the prompt's words, not the judge's; counting them would rank "visual" and "light" first.
_HEADING = re.compile(r"(?:^|(?<=[.!?;\n]))\s*[A-Z][A-Za-z]*(?:[ _-][a-z]+){0,3}\s*:")
_MIN_LETTERS = 3


class WordNetMissing(RuntimeError):
    """WordNet's database files are not where we looked."""


def install_message(root: str) -> str:
    return (f"WordNet 3.0 not found in {root}: install it with `{INSTALL_HINT}` (Debian/Ubuntu), "
            f"or pass --wordnet DIR pointing at a WordNet 3.0 dict directory (index.adj, data.adj, ...)")


def _lexnames_text(root: str) -> str:
    """WordNet's ``lexnames`` table (file number -> lexicographer file), which NLTK's reader requires.

    Debian ships it only as the lexnames(5WN) manual page, so we build the file
    NLTK expects from the lexicographer file numbers in the data files
    themselves: the names only label ``Synset.lexname()``, which we never use.
    """
    pos_code = {"adj": 3, "adv": 4, "noun": 1, "verb": 2}
    numbers: dict[int, str] = {}
    for pos in pos_code:
        with open(os.path.join(root, f"data.{pos}"), encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith("  "):
                    continue  # license header
                fields = line.split(" ", 3)
                if len(fields) > 2:
                    numbers.setdefault(int(fields[1]), pos)
    return "".join(f"{n:02d}\t{numbers.get(n, 'adj')}.lex{n:02d}\t{pos_code[numbers.get(n, 'adj')]}\n"
                   for n in range(max(numbers) + 1))


def load_wordnet(root: str = DEFAULT_WORDNET_DIR):
    """NLTK's ``WordNetCorpusReader`` over a plain WordNet 3.0 dict directory; raises WordNetMissing."""
    needed = ("index.adj", "data.adj", "index.noun", "data.noun", "index.verb", "data.verb", "index.adv", "data.adv",
              "adj.exc")
    if not all(os.path.isfile(os.path.join(root, name)) for name in needed):
        raise WordNetMissing(install_message(root))
    try:
        import nltk
        from nltk.corpus.reader.wordnet import WordNetCorpusReader
    except ImportError as exc:  # a trimmed install: the rest of the report does not need it
        raise WordNetMissing(f"NLTK is not installed ({exc}); install it with `pip install 'nltk>=3.8'`") from exc

    real_root = os.path.realpath(root)
    if real_root not in nltk.data.path:
        nltk.data.path.append(real_root)  # NLTK only opens files under its data paths

    class _PlainWordNetReader(WordNetCorpusReader):
        """NLTK's reader, for a WordNet dict directory without NLTK's extra files.

        Two differences from NLTK's own ``wordnet`` corpus: ``lexnames`` is
        built from the data files (see ``_lexnames_text``), and there is no
        mapping to another WordNet version (this *is* WordNet 3.0, and the
        mapping needs ``index.sense``, which Debian ships separately).
        """

        def open(self, fileid):
            if fileid == "lexnames" and not os.path.isfile(os.path.join(real_root, "lexnames")):
                return io.StringIO(_lexnames_text(real_root))
            return super().open(fileid)

        def map_wn(self, version="wordnet"):
            return None

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "multilingual functions are not available": we need English only
        return _PlainWordNetReader(real_root, None)


class AdjectiveFinder:
    """Finds adjective lemmas in free text with the rule in the module docstring."""

    def __init__(self, wordnet):
        self.wn = wordnet
        self.lookup = lru_cache(maxsize=65536)(self._lookup)

    def _tag_count(self, lemma: str, pos: str) -> int:
        total = 0
        for synset in self.wn.synsets(lemma, pos):
            for entry in synset.lemmas():
                if entry.name().lower() == lemma:
                    total += entry.count()
        return total

    def _lookup(self, token: str) -> tuple[str, bool] | None:
        """(adjective lemma, adjective_only) or None when the token is not counted as an adjective."""
        lemma = self.wn.morphy(token, "a")
        if lemma is None:
            return None
        adverb = self.wn.morphy(token, "r")
        if adverb is not None and self._tag_count(adverb, "r") > self._tag_count(lemma, "a"):
            return None
        other = any(self.wn.morphy(token, pos) is not None for pos in ("n", "v", "r"))
        return lemma, not other

    def adjectives(self, text: str) -> list[str]:
        """Adjective lemmas of ``text`` in order of appearance (with repeats)."""
        found = []
        for token in _TOKEN.findall(_HEADING.sub(" ", text).lower()):
            if len(token.replace("-", "")) < _MIN_LETTERS:
                continue
            hit = self.lookup(token)
            if hit is None and "-" in token:
                hit = self.lookup(token.rsplit("-", 1)[1])  # "well-lit" -> "lit" when WordNet lacks the compound
            if hit is not None:
                found.append(hit[0])
        return found

    def is_adjective_only(self, lemma: str) -> bool:
        hit = self.lookup(lemma)
        return bool(hit and hit[1])


def count_adjectives(finder: AdjectiveFinder, rationales: Iterable[str]) -> tuple[Counter, int]:
    """How many rationales mention each adjective (once per rationale), and how many rationales there were."""
    counts: Counter = Counter()
    n = 0
    for text in rationales:
        n += 1
        counts.update(set(finder.adjectives(text or "")))
    return counts, n
