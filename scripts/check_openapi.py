#!/usr/bin/env python3
"""openapi.yaml is valid YAML with the shape tools read (run by scripts/test with Debian's python3-yaml).

The Swift tests compare its paths with the routes by reading the two-space layout, which does not
parse YAML; schemathesis and other clients do, so a stray ": " in a plain scalar breaks them all.
"""
import os
import sys

import yaml

path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "openapi.yaml")
try:
    doc = yaml.safe_load(open(path))
except yaml.YAMLError as e:
    sys.exit(f"openapi.yaml is not valid YAML: {e}")
problems = []
if not str(doc.get("openapi", "")).startswith("3."):
    problems.append("no openapi: 3.x version")
for p, item in (doc.get("paths") or {}).items():
    for method, op in item.items():
        if method in ("get", "put", "post", "delete", "patch", "head", "options") and not (op or {}).get("responses"):
            problems.append(f"{method.upper()} {p} has no responses")
        elif "{" in p and method in ("get", "put", "post", "delete", "patch") and "400" not in op["responses"]:
            # The server answers 400 to any path segment it cannot take (control characters, bad UTF-8).
            problems.append(f"{method.upper()} {p} takes a path parameter but does not document 400")
if not doc.get("paths"):
    problems.append("no paths")
if problems:
    sys.exit("openapi.yaml: " + "; ".join(problems))
print(f"openapi.yaml: valid YAML, {len(doc['paths'])} paths")
