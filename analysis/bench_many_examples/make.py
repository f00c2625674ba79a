"""The overhead-bound proxy of analysis/results/bench_many_examples.txt: a tiny random Llama
(30 layers, hidden 64) and 1 and 20 pairs of one token length, written to DIR.

    python analysis/bench_many_examples/make.py /tmp/p26
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))
from conftest import RECORDS, make_hf_model, make_tokenizer, write_jsonl  # noqa: E402

out = Path(sys.argv[1])
model = make_hf_model("llama", n_layers=30, d_model=64)
model.save_pretrained(out / "model")
make_tokenizer().save_pretrained(out / "model")
subjects = ["Paris", "France", "Rome", "Italy", "Africa", "Europe", "Asia", "Apple", "Amazon", "English"]
pairs = [{"id": f"p{k}", "clean": f"the {adj} {subjects[k % 10]} is located in the city of",
          "corrupt": f"the {adj} {subjects[(k + 3) % 10]} is located in the city of", "target": "Paris", "alt": "Rome"}
         for k, adj in zip(range(20), ["big", "small", "red", "blue", "green"] * 4)]
write_jsonl(out / "pairs1.jsonl", pairs[:1])
write_jsonl(out / "pairs20.jsonl", pairs)
# the bench's records (`bench.sh`): the tests' three, and one more of the first's relation whose
# subject has as many words, so that `--corruption prompt` finds a substitute in the tiny vocabulary
write_jsonl(out / "records.jsonl", RECORDS + [
    {"id": "r4", "subj": "Beats Music", "obj": "Rome", "prompt_wo_ctx": "Beats Music is located in the city of",
     "passages": [{"text": "Beats Music is in Rome .", "title": ""}], "obj_cf": ["Paris"], "question": "where is Beats Music ?",
     "answers": ["Rome"], "prop": "P1"}])
