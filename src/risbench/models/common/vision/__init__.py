"""Vision towers built on timm: Swin (LAVT, SADLR, LGFormer, M3Dec-Swin) and ViT (ReSTR)."""
