"""OpenAI's Evals on the gateway: evals (an item schema and testing criteria), their runs
(rows answered by a deployed model, or bringing their own answers, then graded) and each run's
output items, persisted in the gateway's SQLite file and run in the background.

The domain here takes plain values and never imports the HTTP layer (`forgeline_gateway.api.evals`):
`service.EvalService` is what the API calls; `graders/` holds one module per grader family.
"""
