"""Documents and scoring of the lm-eval task `fact_claims_ppl` (fact_claims_ppl.yaml beside this file).

Real text, offline: the claims of BIG-bench's fact_checker task (its three sources covid19_scientific,
fever and politifact: the `subtask` of each document), read from qeval's offline BIG-bench pack, the
first `per_source` claims of each source. The claim alone is scored (lm-eval's loglikelihood_rolling),
without the task's question around it.

`process_results` is lm-eval's own for wikitext (lm_eval/tasks/wikitext/preprocess_wikitext.py, lm-eval
0.4.13): (log-likelihood, words) and (log-likelihood, bytes) pairs, which lm-eval aggregates as
word_perplexity, byte_perplexity and bits_per_byte, all lower-is-better in lm-eval's metric registry.
"""

from __future__ import annotations

import re
from typing import Any

CLAIM = re.compile(r"the following claim was made: (.*)\nQ: Was this claim true or false\?", re.S)


def load(per_source: int = 40, **_: Any) -> Any:
    """lm-eval's `custom_dataset`: a DatasetDict with one split, test (metadata and dataset_kwargs come in)."""
    import datasets

    from qeval.assets.bigbench import read_docs

    taken: dict[str, int] = {}
    rows = []
    for doc in read_docs("bigbench_mc_fact_checker"):
        source = doc["subtask"]
        match = CLAIM.search(doc["input"])
        if match is None or taken.get(source, 0) >= int(per_source):
            continue
        taken[source] = taken.get(source, 0) + 1
        rows.append({"text": match.group(1).strip(), "subtask": source, "source_doc_id": doc["doc_id"]})
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})


def process_results(doc: dict[str, Any], results: list[float]) -> dict[str, tuple[float, int]]:
    (loglikelihood,) = results
    text = doc["text"]
    words = len(re.split(r"\s+", text))
    n_bytes = len(text.encode("utf-8"))
    return {"word_perplexity": (loglikelihood, words), "byte_perplexity": (loglikelihood, n_bytes),
            "bits_per_byte": (loglikelihood, n_bytes)}
