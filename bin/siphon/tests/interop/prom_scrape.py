"""Scrapes siphon's /metrics with the standard library and parses it with
PyPI's prometheus_client (the parser Prometheus' Python tooling uses).
Usage: prom_scrape.py URL. Prints one JSON object: {sample name: [[labels, value], ...]}."""
import json
import sys
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

with urllib.request.urlopen(sys.argv[1], timeout=5) as resp:
    assert resp.status == 200, resp.status
    assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4"), resp.headers["Content-Type"]
    text = resp.read().decode()

out = {}
for family in text_string_to_metric_families(text):
    for s in family.samples:
        out.setdefault(s.name, []).append([s.labels, s.value])
print(json.dumps(out))
