"""`maskwatch batch`: recorded video audited in parallel chunks (docs/batch.md).

`chunks` plans the chunks and analyses one (detector, classifier and appearance signature of every face:
the work that needs pixels, independent of any state); `replay` runs the tracker and the votes over the
recorded chunks in order (the same `Pipeline` as `maskwatch detect`); `run` executes chunks on local
processes or Ray tasks, resumably, and writes the reports; `cli` is the command.
"""
