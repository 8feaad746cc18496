"""Read a Prometheus endpoint the way Prometheus does: over HTTP, parsed by the client's parser."""

from __future__ import annotations

import urllib.request

from prometheus_client.parser import text_string_to_metric_families


class Scrape:
    """One scrape of one endpoint: sample values by name and labels."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.samples: dict[str, list[tuple[dict[str, str], float]]] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                self.samples.setdefault(sample.name, []).append((sample.labels, sample.value))

    def value(self, name: str, **labels: str) -> float:
        """The one sample of `name` whose labels include `labels`."""
        found = [v for lab, v in self.samples.get(name, []) if labels.items() <= lab.items()]
        assert len(found) == 1, f"{name}{labels}: {len(found)} samples in\n{self.text[:3000]}"
        return found[0]

    def total(self, name: str, **labels: str) -> float:
        """The sum of every sample of `name` whose labels include `labels`."""
        return sum(v for lab, v in self.samples.get(name, []) if labels.items() <= lab.items())


def scrape(url: str, timeout: float = 5.0) -> Scrape:
    with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - loopback
        assert resp.headers.get_content_type() == "text/plain"
        return Scrape(resp.read().decode())
