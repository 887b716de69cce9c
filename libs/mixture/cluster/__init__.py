"""The embedding and clustering family: what makes the `embeddings` and `clusters` datasets.

CLIMB (Diao et al., NVIDIA 2025) embeds every document, runs k-means with K_init = 1000, prunes
clusters of low mean quality (fastText scores, threshold 3.0) and merges centroids closer than
1.5 (Ward linkage) into about 20 clusters (ClimbLab). Modules:

- `encoder`: the Hugging Face sentence encoder (GPU when present), batched by length;
- `static_encoder`: model2vec static embeddings distilled locally from the encoder;
- `embeddings`: the embedding shards' format (`emb-*.npy` + `ids-*.parquet`) and their readers;
- `kmeans`: faiss k-means, trained on a sample and assigned in streamed batches; Ward merge;
- `groups`: user-given groups (a field, an assignments file) and the assignments' readers;
- `scorers/`: the quality scorers registry (heuristic, classifier, fasttext);
- `report`: the clusters' report (sizes, quality, top terms, examples, plots).
"""
