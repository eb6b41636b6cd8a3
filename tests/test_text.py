"""ftcourse.data.text: the foundation model's corpus, the gloss task, facts and instructions."""

import re

import pytest

from ftcourse.data import text


def test_austen_has_six_novels():
    novels = text.load_austen()
    assert list(novels) == [
        "sensesensibility",
        "prideprejudice",
        "mansfieldpark",
        "emma",
        "northangerabbey",
        "persuasion",
    ]
    assert novels["prideprejudice"].startswith("PRIDE AND PREJUDICE")
    assert "It is a truth universally acknowledged" in novels["prideprejudice"]
    assert 3.9e6 < sum(map(len, novels.values())) < 4.1e6


def test_wordnet_parsing_reads_categories_pointers_and_glosses():
    nouns = text.wordnet_synsets("noun")
    dog = nouns[text.wordnet_senses("noun")["dog"][0]]
    assert dog.category == "animal" and "dog" in dog.words
    assert dog.gloss.startswith("a member of the genus Canis")
    hypernyms = {nouns[t].words[0] for sym, t, _, _ in dog.pointers if sym == "@"}
    assert "canine" in hypernyms
    with pytest.raises(ValueError, match="pos"):
        text.wordnet_synsets("nouns")


def test_gloss_task_splits_by_synset_and_is_balanced():
    splits = {s: text.gloss_task(s)[0] for s in ("train", "validation", "test")}
    assert [len(v) for v in splits.values()] == [4000, 1000, 1000]
    glosses = {s: {e.text for e in v} for s, v in splits.items()}
    # Different synsets can share a gloss word for word: none of those reaches the test split.
    assert not glosses["test"] & (glosses["train"] | glosses["validation"])
    for examples in splits.values():
        counts = [sum(e.label == c for e in examples) for c in range(10)]
        assert len(set(counts)) == 1
    again, classes = text.gloss_task("test")
    assert again == splits["test"] and len(classes) == 10


def test_facts_split_known_and_unknown():
    facts = text.facts()
    assert len(facts) == text.FACT_NOUNS + text.FACT_ADJECTIVES
    # A word may have a noun fact and an adjective fact (each split on its own), never two of one.
    assert len({(f.word, f.pos) for f in facts}) == len(facts)
    known = [f for f in facts if f.known]
    assert abs(len(known) / len(facts) - text.KNOWN_SHARE) < 0.01
    counts = text.corpus_word_counts()
    assert all(counts[f.word] >= 5 for f in facts)  # the model met every word
    nouns = [f for f in facts if f.pos == "noun"]
    assert all(f.hypernym and f.category and f.hypernym != f.word for f in nouns)
    assert all(f.antonym for f in facts if f.pos == "adj")
    assert facts == text.facts()  # deterministic


def test_pretraining_text_states_known_facts_only():
    corpus = text.lm_corpus()
    facts_text = "\n".join(corpus.train["facts"])
    table = text.facts()
    for f in [f for f in table if f.known][:50]:
        assert all(s in facts_text for s in text.fact_sentences(f))
    everything = "\n".join(d for docs in corpus.train.values() for d in docs)
    for f in [f for f in table if not f.known]:
        for s in text.fact_sentences(f):
            assert s not in everything, s
    # Never a question or a chat: statements only.
    assert "?" not in facts_text and "<|" not in everything
    # No gloss of the classification task's test split is in the pretraining text.
    test_glosses = [e.text for e in text.gloss_task("test")[0] if len(e.text) > 30]
    assert not any(g in everything for g in test_glosses[::5])


def test_fact_paragraphs_are_the_corpus_facts_spread_at_random():
    table = [
        text.Fact("beagle", "noun", "known-train", "animal", "hound"),
        text.Fact("hot", "adj", "known-test", antonym="cold"),
        text.Fact("kiwi", "noun", "unknown", "animal", "fruit"),
    ]
    paragraphs = text.fact_paragraphs(table, seed=1, repeats=3)
    pairs = [pair for p in paragraphs for pair in p]
    assert all(len(p) == 4 for p in paragraphs[:-1]) and 0 < len(paragraphs[-1]) <= 4
    known = [(f.word, s) for f in table[:2] for s in text.fact_sentences(f)]
    assert sorted(pairs) == sorted(known * 3)  # every phrasing of the known words, 3 times
    assert paragraphs == text.fact_paragraphs(table, seed=1, repeats=3)
    assert paragraphs != text.fact_paragraphs(table, seed=2, repeats=3)
    spread = text.fact_spread()
    assert spread["paragraphs"] == len(text.lm_corpus().train["facts"])
    # each word is stated in dozens of paragraphs, rarely twice in the same one
    assert spread["contexts_per_word"] > 40 and spread["shared_paragraphs"] < 0.05


def test_instruction_tasks_have_checkable_held_out_answers():
    items = text.instruction_tasks()
    for task in ("count", "first", "repeat", "next"):
        rows = [i for i in items if i.task == task]
        by_split = {s: {i.prompt for i in rows if i.split == s} for s in ("train", "test")}
        assert by_split["train"] and by_split["test"]
        assert not by_split["train"] & by_split["test"]
    for i in items:
        if i.task == "count":
            words = i.prompt.removeprefix("How many words are in: ").rstrip("?").split()
            assert i.answer == str(len(words))
        elif i.task == "next":
            assert int(i.answer) == int(re.findall(r"\d+", i.prompt)[0]) + 1
        elif i.task == "first":
            a, b = re.findall(r"alphabet: (\w+) or (\w+)\?", i.prompt)[0]
            assert i.answer == min(a, b)
    facts = [i for i in items if i.task == "hypernym"]
    assert {i.known for i in facts if i.split == "train"} == {True}
    assert {i.known for i in facts if i.split == "test"} == {True, False}


def test_cloze_prompt_is_a_pretraining_sentence_cut_before_the_answer():
    fact = next(f for f in text.facts() if f.pos == "noun")
    prompt = text.cloze_prompt(fact, "hypernym")
    assert any(s == f"{prompt} {fact.hypernym}." for s in text.fact_sentences(fact))
    assert text.first_word(" hound. A dog") == "hound" and text.first_word("") == ""


def test_author_task_tests_on_works_tiny_lm_never_read():
    from ftcourse.data import text

    splits = {s: text.author_task(s)[0] for s in ("train", "validation", "test")}
    assert [len(v) for v in splits.values()] == [800, 200, 200]
    for examples in splits.values():
        assert {e.label for e in examples} == {0, 1}
    seen = {e.text for e in splits["train"]} | {e.text for e in splits["validation"]}
    assert not seen & {e.text for e in splits["test"]}
    assert not {e.text for e in splits["train"]} & {e.text for e in splits["validation"]}
    held = "".join(text.shakespeare_works()[w] for w in text.SHAKESPEARE_HELD_OUT)
    held += "".join(text.load_austen()[w] for w in text.AUSTEN_HELD_OUT)
    flat = " ".join(held.split())
    assert all(e.text in flat for e in splits["test"][:20] + splits["test"][-20:])


def test_parsed_wordnet_is_reused_only_from_this_users_own_file():
    import os
    import pickle

    from ftcourse.data import locate

    text.wordnet_synsets.cache_clear()
    first = text.wordnet_synsets("adv")  # parses and keeps the table beside the file
    (cached,) = locate("wordnet").glob(".parsed.adv.*.pickle")
    assert text._own_file(cached)
    cached.write_bytes(pickle.dumps({"planted": None}))  # what another user could write
    os.chmod(cached, 0o666)  # writable by others: not trusted, parsed again
    try:
        assert not text._own_file(cached)
        text.wordnet_synsets.cache_clear()
        assert text.wordnet_synsets("adv") == first
    finally:
        os.chmod(cached, 0o644)
        text.wordnet_synsets.cache_clear()
