"""The embedding and clustering family: what makes the `embeddings` and `clusters` datasets.

CLIMB (Diao et al., NVIDIA 2025) embeds every document, runs k-means with K_init = 1000, prunes
clusters of low mean quality (fastText scores, threshold 3.0) and merges centroids closer than
1.5 (Ward linkage) into about 20 clusters (ClimbLab). Modules, in the order the data flows:

- `encoder`: the Hugging Face sentence encoder (GPU when present), batched by length;
- `static_encoder`: model2vec static embeddings distilled locally from the encoder;
- `embed`: what a run embeds, its ranges of shards, the workers that stage them, the version's files;
- `embeddings`: the embedding shards' format (`emb-*.npy` + `ids-*.parquet`) and their readers;
- `stream`: the embeddings and the curated documents streamed together in blocks;
- `kmeans`: faiss k-means on arrays, trained on a sample and assigned in batches; pruning; Ward merge;
- `passes`: a full clustering in streamed passes (train, assign and score, prune and merge, write);
- `refresh`: new documents assigned to the committed centroids, removed ones dropped; the drift check;
- `groups`: user-given groups (a field, an assignments file) and the assignments' readers;
- `user_groups`: the clusters from the user's groups (read, score, number, write);
- `scorers/`: the quality scorers registry (heuristic, classifier, fasttext);
- `report`: the clusters' report as a dict (sizes, quality, terms, snippets, source mix);
- `terms`: a cluster's top TF-IDF terms, typical documents, snippets and tokens per word;
- `evaluation`: purity and NMI of the clusters against the source labels (evaluation only);
- `render`: report.md, report.json and map.png, staged into the dataset and logged to MLflow.
"""
