"""The request schema of docs/openapi.yaml as an API Gateway request model: JSON Schema draft 4,
the dialect API Gateway validates REST API request bodies with.

Writes the model (JSON) to OUT and checks it: a valid draft-4 schema, it accepts the document's
example requests, and of fixtures/bad-requests.json (each a request the host refuses) it
refuses every one that a schema can tell (wrong types, missing fields, ranges, both or
neither of question/questions, blank text); the few it lets through are the checks only the
host can make (JSON syntax, which models exist, token counts, UTF-8 byte lengths, the window
room left for the context), named in EXPRESSIBLE_ONLY_BY_THE_HOST. docs/testing.md shows how a
SAM template uses the model.

Usage: apigw_model.py OUT
"""

import json
import sys
from pathlib import Path

import jsonschema
import yaml

ROOT = Path(__file__).resolve().parents[2]

# Bad requests an API Gateway model cannot refuse, by their name in fixtures/bad-requests.json.
EXPRESSIBLE_ONLY_BY_THE_HOST = {
    "truncated JSON",  # not JSON at all: API Gateway answers 400 itself, before any model
    "not JSON",
    "empty body",
    "raw control character in a string",
    "path traversal model_type",  # which models exist is the host's to say
    "URL model_type",
    "unknown model_type",
    "question over 64 tokens",  # tokens: the guest counts them
    "doc_stride leaving the context no room (max_seq_len 32, doc_stride 512)",  # depends on the question's tokens
    "doc_stride equal to the window's room for the context",
}


def main(out):
    document = yaml.safe_load((ROOT / "docs/openapi.yaml").read_text())
    schema = document["components"]["schemas"]["QaRequest"]
    model = {"$schema": "http://json-schema.org/draft-04/schema#", "title": "QaRequest", **schema}
    jsonschema.Draft4Validator.check_schema(model)
    validator = jsonschema.Draft4Validator(model)

    examples = document["paths"]["/"]["post"]["requestBody"]["content"]["application/json"]["examples"]
    for name, example in examples.items():
        errors = [e.message for e in validator.iter_errors(example["value"])]
        if errors:
            sys.exit(f"apigw_model: the model refuses the example {name!r}: {errors}")

    cases = json.loads((ROOT / "fixtures/bad-requests.json").read_text())["cases"]
    passed, unjudged = [], []
    for case in cases:
        try:
            body = json.loads(case["body"])
        except json.JSONDecodeError:
            passed.append(case["name"])
            continue
        except RecursionError:
            # Deeper than Python's parser goes (the host refuses it as `invalid_field`).
            unjudged.append(case["name"])
            continue
        if validator.is_valid(body):
            passed.append(case["name"])
    unexpected = sorted(set(passed) - EXPRESSIBLE_ONLY_BY_THE_HOST)
    if unexpected:
        sys.exit(f"apigw_model: the model lets through bad requests a schema can refuse: {unexpected}")
    Path(out).write_text(json.dumps(model, indent=2, ensure_ascii=False) + "\n")
    refused = len(cases) - len(passed) - len(unjudged)
    print(
        f"apigw_model: wrote {out}; of the {len(cases)} bad requests of fixtures/bad-requests.json it refuses "
        f"{refused}, lets through {len(passed)} that only the host can tell, and {len(unjudged)} is too deep to parse here"
    )


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
