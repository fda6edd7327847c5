"""Which patches an image hides: ``sampling`` (random, block, top-k and partition masks, AMT's
weighted draw, as pure functions of keys and shapes), AMT's strategy (``amt``), its attention
maps aligned to random crops (``amt_align``) and refreshed during training (``amt_refresh``),
and MixMIM's mixing of two images (``mixing``)."""
