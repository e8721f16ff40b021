"""`evaluate` metric module: METEOR from nltk (`nltk.translate.meteor_score`), averaged over items.

nltk's METEOR matches words exactly, then by Porter stem, then by WordNet 3.0 synonym, and needs the
WordNet database. nltk's copy cannot be downloaded here; Debian's `wordnet-base` and
`wordnet-sense-index` packages ship the same WordNet 3.0 files under /usr/share/wordnet (`make test`
installs them). nltk reads a corpus only below a folder of its data path and needs two files Debian
does not ship in that folder (`lexnames`, and `index.sense` from wordnet-sense-index), so the files are
copied once into `<cache_dir>/nltk_data/corpora/wordnet/` with `lexnames` written from the WordNet
3.0 lexicographer file list. Texts are split with nltk's `wordpunct_tokenize` (a regular expression:
no tokenizer model to download); nltk lower-cases them.
"""

import os
import shutil
import tempfile
from pathlib import Path

import evaluate
from medinject.eval.metric_info import text_pair_info

# WordNet 3.0's lexicographer files, numbered (lexnames(5WN)); the category is the part of speech's number.
_LEXNAMES = (
    "adj.all adj.pert adv.all noun.Tops noun.act noun.animal noun.artifact noun.attribute noun.body noun.cognition "
    "noun.communication noun.event noun.feeling noun.food noun.group noun.location noun.motive noun.object noun.person "
    "noun.phenomenon noun.plant noun.possession noun.process noun.quantity noun.relation noun.shape noun.state "
    "noun.substance noun.time verb.body verb.change verb.cognition verb.communication verb.competition "
    "verb.consumption verb.contact verb.creation verb.emotion verb.motion verb.perception verb.possession "
    "verb.social verb.stative verb.weather adj.ppl"
).split()
_CATEGORY = {"noun": 1, "verb": 2, "adj": 3, "adv": 4}
_NEEDED = ("data.noun", "data.verb", "data.adj", "data.adv", "index.noun", "index.verb", "index.adj", "index.adv", "index.sense")
_READERS: dict[str, object] = {}


def missing_wordnet(source: str) -> str | None:
    """One line saying what is missing from the WordNet folder `source`, or None when it is usable."""
    absent = [name for name in _NEEDED if not (Path(source) / name).is_file()]
    if not absent:
        return None
    return (
        f"paths.wordnet: METEOR needs the WordNet 3.0 database, but {source} lacks {', '.join(absent)}; "
        "install Debian's wordnet-base and wordnet-sense-index (apt-get install wordnet-base wordnet-sense-index; "
        "make test does) or set paths.wordnet to a folder holding them"
    )


def wordnet_reader(source: str, cache_dir: str):
    """nltk's WordNet reader over the database in `source`, staged under `cache_dir` once."""
    if (problem := missing_wordnet(source)) is not None:
        raise FileNotFoundError(problem)
    data_root = Path(cache_dir).expanduser().resolve() / "nltk_data"
    target = data_root / "corpora" / "wordnet"
    if str(target) not in _READERS:
        if not (target / "lexnames").is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=".wordnet-", dir=target.parent))
            try:
                for path in Path(source).iterdir():
                    if path.is_file():
                        shutil.copyfile(path, staging / path.name)
                lines = [f"{i:02d}\t{name}\t{_CATEGORY[name.split('.')[0]]}\n" for i, name in enumerate(_LEXNAMES)]
                (staging / "lexnames").write_text("".join(lines), encoding="utf-8")
                try:
                    os.replace(staging, target)
                except OSError:  # another process staged it first
                    pass
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        import nltk
        from nltk.corpus.reader.wordnet import WordNetCorpusReader

        if str(data_root) not in nltk.data.path:
            nltk.data.path.insert(0, str(data_root))  # nltk only reads corpora below its data path
        _READERS[str(target)] = WordNetCorpusReader(str(target), None)
    return _READERS[str(target)]


class Meteor(evaluate.Metric):
    missing_wordnet = staticmethod(missing_wordnet)  # for a check before a run trains

    def _info(self):
        return text_pair_info(
            "Mean METEOR (nltk.translate.meteor_score, WordNet 3.0 synonyms), 0-1.",
            "predictions, references: lists of str; wordnet: the WordNet 3.0 folder; cache_dir: where it is staged",
        )

    def _compute(self, predictions, references, wordnet="/usr/share/wordnet", cache_dir=None):
        from nltk.tokenize import wordpunct_tokenize
        from nltk.translate.meteor_score import meteor_score

        reader = wordnet_reader(wordnet, cache_dir or os.path.join(tempfile.gettempdir(), "medinject-wordnet"))
        total = 0.0
        for prediction, reference in zip(predictions, references):
            total += meteor_score([wordpunct_tokenize(reference)], wordpunct_tokenize(prediction), wordnet=reader)
        return {"meteor": total / max(len(references), 1)}
