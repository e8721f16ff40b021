"""What the shipped `evaluate` metric modules share: a prediction string scored against a reference string."""

import datasets
import evaluate


def text_pair_info(description: str, inputs_description: str = "predictions: list of str, references: list of str") -> evaluate.MetricInfo:
    return evaluate.MetricInfo(
        description=description,
        citation="",
        inputs_description=inputs_description,
        features=datasets.Features({"predictions": datasets.Value("string"), "references": datasets.Value("string")}),
    )
