"""vlmq: VLM Q-learning on Ray.

Every vlmq process imports this package (the driver, and each actor as it unpickles its config), so it
is where false third-party warnings are dropped. transformers 5 builds a default `Idefics3Config()`
whenever it prints or diffs a config (it logs every config it loads), and that default pairs pad id
128002 with a 32,000-token default text config: every Idefics3 load warned "pad_token_id must be `None`
or an integer within the vocabulary (between 0 and 31999), got 128002", about the class's defaults and
never about the model's own ids. Only that message is dropped; the same check on a loaded config's own
ids still warns (docs/models.md).
"""

import logging

_IDEFICS3_DEFAULTS = "within the vocabulary (between 0 and 31999), got 128002"
logging.getLogger("transformers.configuration_utils").addFilter(
    lambda record: _IDEFICS3_DEFAULTS not in record.getMessage()
)

# PaliGemma's processor warns on every prompt whose text holds no <image> token. The PaliGemma chat
# template leaves them out on purpose: PaliGemma puts every image first, the layout vLLM builds too
# (vlmq/tiny_model.py).
_PALIGEMMA_LAYOUT = "You are passing both `text` and `images` to `PaliGemmaProcessor`"
logging.getLogger("transformers.models.paligemma.processing_paligemma").addFilter(
    lambda record: _PALIGEMMA_LAYOUT not in record.getMessage()
)
