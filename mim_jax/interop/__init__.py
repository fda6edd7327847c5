"""Weight interop with the PyTorch world (``python -m mim_jax.interop.convert``).

``names``: tensor names and layouts of mim_jax, timm / official MAE and HF transformers ViT /
ViTMAE; ``files``: reading .pth / .bin / .safetensors, writing safetensors and HF config.json;
``convert``: the command line; ``pretrained``: an encoder restored from another run's checkpoint
(``config.init_from``).
"""

from mim_jax.interop.names import ConversionError  # noqa: F401
