"""External validation: a trained BloodMNIST run applied, unchanged, to cells from another lab.

One module per step, in the order a dataset goes through them:

- `scan`: a dataset's layout (a folder per class, as in Raabin-WBC, or a CSV of `path,label`), problems counted
- `mapping`: its class names -> BloodMNIST's labels (automatic, with a user's overrides)
- `loading`: the mapped files decoded at the model's input, as the upload path does
- `scoring`: the run scored on them (argmax over all classes and over the shared ones), Tables 14/15, summaries
- `finetune`: `FineTuneConfig` and fine-tuning a copy of the model on part of the data, scored on the rest
- `storage`: evaluations stored with their run, read back and listed
- `report`: stored records shaped for the page: normalisations side by side, the fine-tuning table, cell samples
- `flow`: `run_external`, the one flow the command line and the External validation page call

Errors a user can fix are `errors.ExternalError`. TensorFlow is imported only inside the functions that run
a model; nothing here imports it at import time.
"""
