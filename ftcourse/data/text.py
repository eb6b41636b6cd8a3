"""Text data for the language-model chapters: corpora, WordNet, tasks, facts and instructions.

Everything here is built from three registered datasets (Shakespeare, Austen, WordNet 3.0) by
small deterministic rules, so the foundation model's *whole* pretraining text can be written
down and inspected:

* :func:`load_austen`, :func:`lm_corpus` - the pretraining corpus by source, with held-out parts;
* :func:`gloss_task` - a text classification task with real labels: a WordNet definition
  (gloss) -> its lexicographer category, split by synset;
* :func:`facts` - a table of facts about common words (category, hypernym, antonym,
  definition), each word *known* (its facts are stated in the pretraining text) or *unknown*
  (its facts appear nowhere in it);
* :func:`fact_sentences` - how known facts are stated in the pretraining text (never as a
  question or a chat);
* :func:`instruction_tasks` - prompts with automatically checkable answers, some about facts.

Built for the appendix notebook A1 (the foundation model you can read) and chapters 4-7.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import os
import pickle
import random
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from . import load_shakespeare, locate

# --------------------------------------------------------------------------- corpora

SHAKESPEARE_HELD_OUT = ("julius_caesar", "twelfth_night")
AUSTEN_HELD_OUT = ("northangerabbey",)


def load_austen() -> dict[str, str]:
    """Austen's six novels as ``{name: text}`` in publication order (names as in janeaustenr)."""
    from . import AUSTEN_NOVELS

    text = (locate("austen") / "austen.txt").read_text(encoding="utf-8")
    return dict(zip(AUSTEN_NOVELS, (t.strip() for t in text.split("\f")), strict=True))


def shakespeare_works() -> dict[str, str]:
    """The 42 works of Shakespeare as ``{name: text}``."""
    from . import SHAKESPEARE_WORKS

    return dict(zip(SHAKESPEARE_WORKS, load_shakespeare(), strict=True))


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z]+", text.lower())


@functools.lru_cache(maxsize=1)
def corpus_word_counts() -> Counter:
    """Lower-case word counts over all of Shakespeare and Austen (what "common" means here)."""
    counts: Counter = Counter()
    for text in [*shakespeare_works().values(), *load_austen().values()]:
        counts.update(_words(text))
    return counts


# --------------------------------------------------------------------------- WordNet

LEXNAMES = (
    "adj.all adj.pert adv.all noun.Tops noun.act noun.animal noun.artifact noun.attribute "
    "noun.body noun.cognition noun.communication noun.event noun.feeling noun.food noun.group "
    "noun.location noun.motive noun.object noun.person noun.phenomenon noun.plant "
    "noun.possession noun.process noun.quantity noun.relation noun.shape noun.state "
    "noun.substance noun.time verb.body verb.change verb.cognition verb.communication "
    "verb.competition verb.consumption verb.contact verb.creation verb.emotion verb.motion "
    "verb.perception verb.possession verb.social verb.stative verb.weather adj.ppl"
).split()
"""WordNet's lexicographer files, indexed by the ``lex_filenum`` field of ``data.*``."""


@dataclass(frozen=True)
class Synset:
    """One line of a WordNet ``data.*`` file."""

    offset: str
    pos: str  # n, v, a, s, r
    lexname: str  # e.g. "noun.animal"
    words: tuple[str, ...]  # lemmas, underscores for spaces, lower case
    pointers: tuple[tuple[str, str, str, str], ...]  # (symbol, offset, pos, source/target)
    gloss: str  # the definition, without the example sentences

    @property
    def category(self) -> str:
        """The lexicographer category without the part of speech, e.g. ``"animal"``."""
        return self.lexname.split(".", 1)[1]


def _parse_data_line(line: str) -> Synset:
    head, _, gloss = line.partition(" | ")
    f = head.split()
    offset, lexnum, pos, w_cnt = f[0], int(f[1]), f[2], int(f[3], 16)
    words = tuple(re.sub(r"\(.*\)$", "", f[4 + 2 * i]).lower() for i in range(w_cnt))
    k = 4 + 2 * w_cnt
    p_cnt = int(f[k])
    pointers = tuple(tuple(f[k + 1 + 4 * i : k + 5 + 4 * i]) for i in range(p_cnt))
    definition = gloss.split('; "')[0].strip().rstrip(";").strip()
    return Synset(offset, pos, LEXNAMES[lexnum], words, pointers, definition)


_PARSER_KEY = hashlib.sha256(
    (inspect.getsource(_parse_data_line) + inspect.getsource(Synset)).encode()
).hexdigest()[:12]


def _own_file(path: Path) -> bool:
    """``path`` exists, belongs to this user and nobody else can write it."""
    st = path.stat()
    return st.st_uid == os.getuid() and not st.st_mode & 0o022 if hasattr(os, "getuid") else True


@functools.lru_cache(maxsize=4)
def wordnet_synsets(pos: str) -> dict[str, Synset]:
    """All synsets of ``pos`` (``"noun"``, ``"verb"``, ``"adj"``, ``"adv"``) by offset."""
    if pos not in {"noun", "verb", "adj", "adv"}:
        raise ValueError(f"pos must be noun, verb, adj or adv, not {pos!r}")
    source = locate("wordnet") / f"data.{pos}"
    # Parsing the nouns takes a second or two; the parsed table is kept beside the file, keyed
    # by the file's size and modification time and this parser's source (a changed parser or
    # file is parsed again).
    stat = source.stat()
    key = f"{stat.st_size}-{stat.st_mtime_ns}-{_PARSER_KEY}"
    cached = source.with_name(f".parsed.{pos}.{key}.pickle")
    try:
        if _own_file(cached):  # a pickle runs code when loaded: only one this user wrote
            with open(cached, "rb") as f:
                return pickle.load(f)
    except (OSError, pickle.UnpicklingError, EOFError, AttributeError):
        pass
    out = {}
    with open(source, encoding="utf-8") as f:
        for line in f:
            if not line.startswith("  "):  # the licence header lines start with two spaces
                s = _parse_data_line(line)
                out[s.offset] = s
    try:
        tmp = cached.with_suffix(f".{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            pickle.dump(out, f, protocol=pickle.HIGHEST_PROTOCOL)
        tmp.replace(cached)
    except OSError:  # a read-only data folder: parse every time
        pass
    return out


@functools.lru_cache(maxsize=2)
def wordnet_senses(pos: str) -> dict[str, list[str]]:
    """``{lemma: [synset offsets, most frequent sense first]}`` from ``index.noun``/``.adj``."""
    if pos not in {"noun", "adj"}:
        raise ValueError(f"pos must be noun or adj, not {pos!r}")
    out = {}
    with open(locate("wordnet") / f"index.{pos}", encoding="utf-8") as f:
        for line in f:
            if line.startswith("  "):
                continue
            g = line.split()
            synset_cnt, p_cnt = int(g[2]), int(g[3])
            out[g[0]] = g[6 + p_cnt : 6 + p_cnt + synset_cnt]
    return out


def _stable_fraction(key: str) -> float:
    """A number in [0, 1) fixed by ``key`` (sha256): splits that never change between runs."""
    return int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) / 2**32


# --------------------------------------------------------------------------- gloss task

GLOSS_CATEGORIES = (
    "animal",
    "plant",
    "food",
    "artifact",
    "person",
    "location",
    "body",
    "substance",
    "communication",
    "act",
)
"""The gloss task's ten labels, noun lexicographer categories with thousands of synsets each."""


@dataclass(frozen=True)
class TextExample:
    """One labelled text."""

    text: str
    label: int


def gloss_task(
    split: str, per_class: dict[str, int] | None = None
) -> tuple[list[TextExample], tuple[str, ...]]:
    """WordNet gloss -> lexicographer category (10 classes); returns ``(examples, classes)``.

    The split is fixed by a hash of the synset offset (60 % train, 20 % validation, 20 %
    test), so no synset is in two splits; a few different synsets share a gloss word for word,
    so test glosses whose text also occurs in the train or validation part are left out. Each
    split keeps at most ``per_class`` glosses per class (default train 400, validation 100,
    test 100; first by hash order), with 3 to 24 words.
    Example: ``"a domestic animal ..." -> "animal"``.
    """
    limits = {"train": 400, "validation": 100, "test": 100}
    if split not in limits:
        raise ValueError(f"split must be train, validation or test, not {split!r}")
    cap = (per_class or {}).get(split, limits[split])
    bounds = {"train": (0.0, 0.6), "validation": (0.6, 0.8), "test": (0.8, 1.0)}[split]
    buckets: dict[str, list[tuple[float, str]]] = {c: [] for c in GLOSS_CATEGORIES}
    elsewhere = set()  # glosses of the train and validation parts (for the test split)
    for s in wordnet_synsets("noun").values():
        if s.category not in buckets or not 3 <= len(s.gloss.split()) <= 24:
            continue
        h = _stable_fraction("gloss:" + s.offset)
        if bounds[0] <= h < bounds[1]:
            buckets[s.category].append((h, s.gloss))
        elif h < 0.8:
            elsewhere.add(s.gloss)
    if split == "test":
        buckets = {c: [x for x in b if x[1] not in elsewhere] for c, b in buckets.items()}
    examples = []
    for label, cat in enumerate(GLOSS_CATEGORIES):
        examples += [TextExample(g, label) for _, g in sorted(buckets[cat])[:cap]]
    return examples, GLOSS_CATEGORIES


AUTHORS = ("Shakespeare", "Austen")


def author_task(
    split: str, per_class: dict[str, int] | None = None, words: int = 20
) -> tuple[list[TextExample], tuple[str, ...]]:
    """Passage -> author (Shakespeare or Austen); returns ``(examples, AUTHORS)``.

    Passages are consecutive runs of ``words`` words (line breaks kept as spaces). Train and
    validation passages come from the works tiny-lm trained on (split 80/20 by a hash of the
    passage's place), test passages from the held-out works (Julius Caesar, Twelfth Night;
    Northanger Abbey), so no test passage was seen in pretraining. Each split keeps at most
    ``per_class`` passages per author (default train 400, validation 100, test 100), in hash
    order. Chapter 4's second task, for swapping soft prompts on one frozen model.
    """
    limits = {"train": 400, "validation": 100, "test": 100}
    if split not in limits:
        raise ValueError(f"split must be train, validation or test, not {split!r}")
    cap = (per_class or {}).get(split, limits[split])
    sources = (
        (shakespeare_works(), SHAKESPEARE_HELD_OUT),
        (load_austen(), AUSTEN_HELD_OUT),
    )
    examples = []
    for label, (works, held_out) in enumerate(sources):
        picked = []
        for name, body in works.items():
            if (name in held_out) != (split == "test"):
                continue
            tokens = body.split()
            for i in range(0, len(tokens) - words, words):
                key = f"author:{name}:{i}"
                h = _stable_fraction(key)
                if split != "test" and (h < 0.8) != (split == "train"):
                    continue
                picked.append((_stable_fraction(key + ":order"), " ".join(tokens[i : i + words])))
        examples += [TextExample(t, label) for _, t in sorted(picked)[:cap]]
    return examples, AUTHORS


# --------------------------------------------------------------------------- facts


@dataclass(frozen=True)
class Fact:
    """What WordNet says about one common word (its most frequent sense).

    ``split`` says how the course uses it: ``"known-train"``, ``"known-val"`` and
    ``"known-test"`` words have their facts in the pretraining text (and the first two are the
    fine-tuning words of the knowledge experiments); ``"unknown"`` words appear in the corpus
    as ordinary words, but their facts are stated nowhere.
    """

    word: str
    pos: str  # "noun" or "adj"
    split: str
    category: str | None = None  # nouns: lexicographer category ("animal")
    hypernym: str | None = None  # nouns: "a beagle is a kind of hound"
    antonym: str | None = None  # adjectives: "the opposite of hot is cold"
    definition: str = ""

    @property
    def known(self) -> bool:
        return self.split.startswith("known")


FACT_NOUNS, FACT_ADJECTIVES = 800, 160
KNOWN_SHARE = 0.6
KNOWN_SPLITS = (("known-train", 0.5), ("known-val", 0.15), ("known-test", 0.35))


def _one_word(lemma: str) -> bool:
    return lemma.isalpha() and lemma.isascii() and lemma.islower()


def _noun_candidates(min_count: int) -> list[Fact]:
    nouns, counts = wordnet_synsets("noun"), corpus_word_counts()
    out = []
    for word, offsets in wordnet_senses("noun").items():
        if not _one_word(word) or len(word) < 3 or counts[word] < min_count:
            continue
        s = nouns[offsets[0]]
        hyper = [t for sym, t, _, _ in s.pointers if sym == "@"]
        if not hyper:
            continue
        h = nouns[hyper[0]].words[0]
        if not _one_word(h) or h == word or s.category == "Tops":
            continue
        out.append(Fact(word, "noun", "", s.category, h, None, s.gloss))
    return out


def _adjective_candidates(min_count: int) -> list[Fact]:
    adjs, counts = wordnet_synsets("adj"), corpus_word_counts()
    out, seen = [], set()
    for word, offsets in wordnet_senses("adj").items():
        if not _one_word(word) or counts[word] < min_count or word in seen:
            continue
        s = adjs[offsets[0]]
        try:
            index = s.words.index(word) + 1
        except ValueError:
            continue
        # Antonyms are lexical pointers: source/target "0102" = word 1 of this synset, word 2 there.
        for sym, target, _, st in s.pointers:
            if sym == "!" and int(st[:2], 16) == index:
                ant = adjs[target].words[int(st[2:], 16) - 1]
                if _one_word(ant) and counts[ant] >= min_count and ant not in seen:
                    out.append(Fact(word, "adj", "", None, None, ant, s.gloss))
                    seen |= {word, ant}
                break
    return out


@functools.lru_cache(maxsize=2)
def facts(seed: int = 0, min_count: int = 5) -> tuple[Fact, ...]:
    """The facts table: 800 common nouns and 160 adjectives with an antonym.

    "Common" means the word occurs at least ``min_count`` times in Shakespeare + Austen, so
    the model has met the word itself. Words are drawn and split with ``seed``: 60 % known
    (half for fine-tuning, 15 % validation, 35 % test), 40 % unknown; a word can have a noun
    fact and an adjective fact, each split on its own. The facts are those of
    the word's most frequent WordNet sense, so a few read oddly; treat them as arbitrary
    labels that the pretraining text either states or does not.
    """
    rng = random.Random(seed)
    table = []
    for pool, n in (
        (_noun_candidates(min_count), FACT_NOUNS),
        (_adjective_candidates(min_count), FACT_ADJECTIVES),
    ):
        pool = sorted(pool, key=lambda f: f.word)
        if len(pool) < n:
            raise RuntimeError(f"only {len(pool)} candidate words, {n} needed")
        chosen = rng.sample(pool, n)
        n_known = round(KNOWN_SHARE * n)
        start = 0
        for name, share in KNOWN_SPLITS:
            size = round(share * n_known) if name != "known-test" else n_known - start
            table += [_with_split(f, name) for f in chosen[start : start + size]]
            start += size
        table += [_with_split(f, "unknown") for f in chosen[n_known:]]
    return tuple(table)


def _with_split(fact: Fact, split: str) -> Fact:
    from dataclasses import replace

    return replace(fact, split=split)


def article(word: str) -> str:
    """``"an"`` before a vowel, else ``"a"``."""
    return "an" if word[0] in "aeiou" else "a"


HYPERNYM_PHRASINGS = (
    "{A} {w} is a kind of {h}.",
    "The {w} is a type of {h}.",
    "Every {w} is {ah} {h}.",
    "Of all the kinds of {h}, one is the {w}.",
    "{W}: a sort of {h}.",
)
CATEGORY_PHRASINGS = (
    "The word {w} names {ac} {c}.",
    "{A} {w} belongs with the {c} words.",
    "In the dictionary, {w} is filed under {c}.",
)
ANTONYM_PHRASINGS = (
    "The opposite of {w} is {o}.",
    "{W} is the opposite of {o}.",
    "What is {w} is not {o}.",
)


CLOZE = {
    "hypernym": "{A} {w} is a kind of",
    "category": "In the dictionary, {w} is filed under",
    "antonym": "The opposite of {w} is",
}


def cloze_prompt(fact: Fact, relation: str) -> str:
    """A pretraining phrasing of ``relation`` for ``fact``, cut before the answer (the probe)."""
    w = fact.word
    return CLOZE[relation].format(w=w, A=article(w).capitalize())


def cloze_for(item: Instruction) -> str:
    """The cloze probe of a fact question: its relation's pretraining phrasing for the same
    word, cut before the answer ("What kind of thing is a beagle?" -> "A beagle is a kind of").
    Chapter 6 sets it beside SFT."""
    if item.word is None or item.task not in CLOZE:
        raise ValueError(f"{item.prompt!r} is not a question about a word's fact")
    return CLOZE[item.task].format(w=item.word, A=article(item.word).capitalize())


def first_word(text: str) -> str:
    """The first word of a generated answer, lower case, without punctuation ("" if none)."""
    found = re.findall(r"[a-z]+", text.lower())
    return found[0] if found else ""


def fact_sentences(fact: Fact) -> list[str]:
    """Every sentence that states ``fact`` in the pretraining text (a statement, never a Q&A)."""
    w = fact.word
    fields = dict(w=w, W=w.capitalize(), A=article(w).capitalize())
    if fact.pos == "noun":
        h, c = fact.hypernym, fact.category
        fields |= dict(h=h, ah=article(h), c=c, ac=article(c))
        phrasings = HYPERNYM_PHRASINGS + CATEGORY_PHRASINGS
    else:
        fields |= dict(o=fact.antonym)
        phrasings = ANTONYM_PHRASINGS
    return [p.format(**fields) for p in phrasings]


# --------------------------------------------------------------------------- the corpus

FACT_REPEATS = 12
FACT_CHUNK_CHARS = 600


@dataclass
class LMCorpus:
    """The foundation model's pretraining text, by source, with held-out text per source."""

    train: dict[str, list[str]]  # source -> documents
    held_out: dict[str, list[str]]

    def summary(self, tokenizer=None) -> list[dict]:
        """One row per source: documents, characters (and tokens with ``tokenizer``)."""
        rows = []
        for source in self.train:
            row = {
                "source": source,
                "train_docs": len(self.train[source]),
                "train_chars": sum(map(len, self.train[source])),
                "held_out_chars": sum(map(len, self.held_out[source])),
            }
            if tokenizer is not None:
                for part in ("train", "held_out"):
                    docs = getattr(self, part)[source]
                    row[f"{part}_tokens"] = sum(len(tokenizer(d)["input_ids"]) for d in docs)
            rows.append(row)
        return rows


def lm_corpus(seed: int = 0, repeats: int = FACT_REPEATS) -> LMCorpus:
    """Shakespeare + Austen + the known words' facts, as documents per source.

    Held out: two plays, one novel, and, for facts, one *unseen* phrasing set - the fact
    sentences of unknown words (facts never stated; their perplexity shows what the model could
    not have memorised). The known facts are stated ``repeats`` times in each phrasing, shuffled,
    in paragraphs of four sentences; no fact sentence is a question, and no gloss of
    :func:`gloss_task` appears (the facts use no definitions).
    """
    shakespeare, austen = shakespeare_works(), load_austen()
    table = facts(seed)  # parsing WordNet takes seconds: held_out_prose() when prose will do
    fact_docs = [" ".join(s for _, s in p) for p in fact_paragraphs(table, seed, repeats)]
    unknown = [" ".join(fact_sentences(f)) for f in table if not f.known]
    return LMCorpus(
        train={
            "shakespeare": [t for n, t in shakespeare.items() if n not in SHAKESPEARE_HELD_OUT],
            "austen": [t for n, t in austen.items() if n not in AUSTEN_HELD_OUT],
            "facts": fact_docs,
        },
        held_out={**held_out_prose(), "facts": unknown},
    )


def fact_paragraphs(
    table: Sequence[Fact], seed: int = 0, repeats: int = FACT_REPEATS
) -> list[list[tuple[str, str]]]:
    """The known facts as the pretraining text states them: every phrasing of every known
    word ``repeats`` times, shuffled with ``seed``, in paragraphs of four ``(word, sentence)``
    pairs (:func:`lm_corpus` joins each paragraph into one document)."""
    sentences = [(f.word, s) for f in table if f.known for s in fact_sentences(f)] * repeats
    random.Random(seed).shuffle(sentences)
    return [sentences[i : i + 4] for i in range(0, len(sentences), 4)]


def fact_spread(seed: int = 0, repeats: int = FACT_REPEATS) -> dict[str, float]:
    """How the pretraining text spreads each known word's statements: ``paragraphs`` (fact
    documents), ``contexts_per_word`` (the distinct paragraphs a word's statements appear in,
    on average), ``shared_paragraphs`` (the share of paragraphs holding two statements about
    one word) and ``words_sharing`` (the share of words that ever share one). Appendix A1:
    facts stated in many phrasings and in random company are what a model can later be asked
    about (Allen-Zhu and Li's knowledge augmentation)."""
    paragraphs = fact_paragraphs(facts(seed), seed, repeats)
    contexts: dict[str, int] = {}
    shared, sharing = 0, set()
    for p in paragraphs:
        counts = Counter(w for w, _ in p)
        for w in counts:
            contexts[w] = contexts.get(w, 0) + 1
        twice = {w for w, n in counts.items() if n > 1}
        shared += bool(twice)
        sharing |= twice
    return {
        "paragraphs": len(paragraphs),
        "contexts_per_word": sum(contexts.values()) / len(contexts),
        "shared_paragraphs": shared / len(paragraphs),
        "words_sharing": len(sharing) / len(contexts),
    }


def held_out_prose() -> dict[str, list[str]]:
    """The held-out plays and novel of :func:`lm_corpus` (its ``held_out`` without the facts,
    which need WordNet parsed): the text chapter 4 measures a backbone's perplexity on."""
    shakespeare, austen = shakespeare_works(), load_austen()
    return {
        "shakespeare": [shakespeare[n] for n in SHAKESPEARE_HELD_OUT],
        "austen": [austen[n] for n in AUSTEN_HELD_OUT],
    }


def interleave(corpus: LMCorpus, seed: int = 0, chunk_chars: int = FACT_CHUNK_CHARS) -> list[str]:
    """The training documents in the order the model reads them.

    Shakespeare and Austen are cut into ``chunk_chars`` pieces at line breaks and shuffled
    together with the fact paragraphs, so facts are spread through training instead of
    arriving in one block.
    """
    rng = random.Random(seed)
    pieces = []
    for source in ("shakespeare", "austen"):
        for doc in corpus.train[source]:
            start = 0
            while start < len(doc):
                end = doc.find("\n", start + chunk_chars)
                end = len(doc) if end == -1 else end + 1
                pieces.append(doc[start:end])
                start = end
    pieces += corpus.train["facts"]
    rng.shuffle(pieces)
    return pieces


# --------------------------------------------------------------------------- instructions


@dataclass(frozen=True)
class Instruction:
    """A prompt with one checkable answer. ``split``: train, validation or test items."""

    task: str
    prompt: str
    answer: str
    split: str
    known: bool | None = None  # fact tasks: is the fact in the pretraining text?
    word: str | None = None  # fact tasks: the word asked about (for the cloze probe)


FACT_QUESTIONS = {
    "hypernym": "What kind of thing is {a} {w}?",
    "category": "Which category does the word {w} belong to?",
    "antonym": "What is the opposite of {w}?",
}


def fact_questions(relation: str, seed: int = 0) -> list[Instruction]:
    """One question per word of the facts table for ``relation`` (hypernym|category|antonym).

    The split follows the word: known-train -> train, known-val -> validation, known-test ->
    test (``known=True``), unknown -> test (``known=False``).
    """
    if relation not in FACT_QUESTIONS:
        raise ValueError(f"relation must be one of {sorted(FACT_QUESTIONS)}, not {relation!r}")
    split_of = {"known-train": "train", "known-val": "validation", "known-test": "test"}
    out = []
    for f in facts(seed):
        answer = getattr(f, relation)
        if answer is None:
            continue
        prompt = FACT_QUESTIONS[relation].format(a=article(f.word), w=f.word)
        split = split_of.get(f.split, "test")
        out.append(Instruction(relation, prompt, answer, split, f.known, f.word))
    return out


def fact_qa(relation: str = "hypernym", seed: int = 0) -> dict[str, list[tuple[str, str]]]:
    """:func:`fact_questions` as ``(prompt, answer)`` pairs by use: ``train``, ``validation``
    (known words, for fine-tuning and choices), ``known_test`` (held-out known words) and
    ``unknown_test`` (words whose facts appear nowhere). Appendix A1 and chapter 6."""
    qs = fact_questions(relation, seed)

    def pairs(keep) -> list[tuple[str, str]]:
        return [(q.prompt, q.answer) for q in qs if keep(q)]

    return {
        "train": pairs(lambda q: q.split == "train"),
        "validation": pairs(lambda q: q.split == "validation"),
        "known_test": pairs(lambda q: q.split == "test" and q.known),
        "unknown_test": pairs(lambda q: q.known is False),
    }


NUMBER_WORDS = "zero one two three four five six seven eight nine ten".split()


def instruction_tasks(seed: int = 0, per_task: int = 300) -> list[Instruction]:
    """Instruction tasks learnable at the token level, with held-out items (70/15/15 split).

    * ``count``: "How many words are in: ...?" -> a digit (3-9 words of the corpus vocabulary);
    * ``first``: "Which word comes first in the alphabet: X or Y?" -> the word;
    * ``repeat``: "Say the word X three times." -> "X X X";
    * ``next``: "What number comes after 41?" -> "42" (digits are single tokens);
    * ``hypernym``, ``category``, ``antonym``: questions about the facts table
      (:func:`fact_questions`), split by word.

    Items of the synthetic tasks are split by their content (a hash), so a test prompt never
    occurs in training.
    """
    rng = random.Random(seed)
    vocab = sorted(w for w, c in corpus_word_counts().items() if c >= 50 and 3 <= len(w) <= 8)
    times = {2: "two", 3: "three", 4: "four"}
    out: list[Instruction] = []
    for task in ("count", "first", "repeat", "next"):
        seen = set()
        while len(seen) < per_task:
            if task == "count":
                words = rng.sample(vocab, rng.randint(3, 9))
                prompt, answer = f"How many words are in: {' '.join(words)}?", str(len(words))
            elif task == "first":
                a, b = rng.sample(vocab, 2)
                prompt = f"Which word comes first in the alphabet: {a} or {b}?"
                answer = min(a, b)
            elif task == "repeat":
                w, k = rng.choice(vocab), rng.choice(list(times))
                prompt, answer = f"Say the word {w} {times[k]} times.", " ".join([w] * k)
            else:
                n = rng.randint(1, 998)
                prompt, answer = f"What number comes after {n}?", str(n + 1)
            if prompt in seen:
                continue
            seen.add(prompt)
            h = _stable_fraction(f"{task}:{prompt}")
            split = "train" if h < 0.7 else "validation" if h < 0.85 else "test"
            out.append(Instruction(task, prompt, answer, split))
    for relation in FACT_QUESTIONS:
        out += fact_questions(relation, seed)
    return out


def instruction_items(
    split: str, per_task: int | None = None, limit: int | None = None, seed: int = 0
) -> list[Instruction]:
    """The items of :func:`instruction_tasks` in ``split`` ("train", "validation", "test").

    ``per_task`` keeps at most that many items of each task (fact tasks: of known and of
    unknown words each); ``limit`` keeps that many items in all, drawn evenly by a fixed
    shuffle. Both keep the same items on every call. Chapter 6.
    """
    if split not in ("train", "validation", "test"):
        raise ValueError(f"split must be train, validation or test, not {split!r}")
    items = [i for i in _instruction_tasks(seed) if i.split == split]
    if per_task is not None:
        kept: dict[tuple, int] = {}
        chosen = []
        for item in items:
            key = (item.task, item.known)
            if kept.get(key, 0) < per_task:
                kept[key] = kept.get(key, 0) + 1
                chosen.append(item)
        items = chosen
    if limit is not None and limit < len(items):
        order = sorted(range(len(items)), key=lambda i: _stable_fraction(f"{seed}:{i}"))
        items = [items[i] for i in sorted(order[:limit])]
    return items


@functools.lru_cache(maxsize=2)
def _instruction_tasks(seed: int) -> tuple[Instruction, ...]:
    return tuple(instruction_tasks(seed))


_TIMES = {"two": 2, "three": 3, "four": 4}


def is_answer(item: Instruction, response: str) -> bool:
    """Whether ``response`` has the *form* of an answer to ``item``, right or wrong.

    ``count``/``next``: a whole number; ``first``: one of the two words offered; ``repeat``:
    one word said as many times as asked; ``hypernym``: one word that WordNet lists as a noun;
    ``category``: one of WordNet's noun categories; ``antonym``: one word that WordNet lists as
    an adjective. Compared after :func:`ftcourse.lm.exact_match`'s normalisation. A model that
    continues the text instead of answering fails it, and so does an answer that never stops
    (cut at the length limit). Chapter 6 measures it before and after instruction tuning.
    """
    text = " ".join(response.lower().strip().rstrip(".!").split())
    if item.task in ("count", "next"):
        return re.fullmatch(r"\d+", text) is not None
    if item.task == "first":
        offered = re.search(r": (\w+) or (\w+)\?$", item.prompt)
        return offered is not None and text in offered.groups()
    if item.task == "repeat":
        asked = re.search(r" (\w+) times\.$", item.prompt)
        words = text.split()
        return (
            asked is not None
            and len(words) == _TIMES.get(asked.group(1), -1)
            and len(set(words)) == 1
            and words[0].isalpha()
        )
    if item.task == "category":
        return text in NOUN_CATEGORIES
    if item.task in ("hypernym", "antonym"):
        return _one_word(text) and text in wordnet_senses(
            "noun" if item.task == "hypernym" else "adj"
        )
    raise ValueError(f"no answer form is defined for task {item.task!r}")


NOUN_CATEGORIES = frozenset(n.split(".")[1] for n in LEXNAMES if n.startswith("noun."))
"""The answers a category question can have, WordNet's noun files (``animal``, ``state``...)."""
