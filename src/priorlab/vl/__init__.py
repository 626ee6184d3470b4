"""A vision-language stand-in for the CLIP papers: a frozen MiniLM text encoder
(:mod:`priorlab.vl.text`) and a small image encoder trained here contrastively against it
(:mod:`priorlab.vl.standin`), with zero-shot classification and base-to-novel helpers."""
