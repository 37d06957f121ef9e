"""The exercise checks' tests: right answers pass, plausible wrong answers fail naming the mistake."""
