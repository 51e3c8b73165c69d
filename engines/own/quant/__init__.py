"""Weight-only quantized linear layers for the own engine (technique.quant = int8 | int4).

`formats` turns a float weight into integer codes plus scales (and back, as the reference); `linear` holds
the layers the model calls (float, int8, int4), each running the fastest matmul its device has;
`apply` swaps a loaded model's float layers for quantized ones and reports what that saved.
"""
