"""On-disk layout of a prepared dataset (the single hand-off between data preparation and models).

A prepared dataset is a folder::

    manifest.json        inputs (path, sha256), protocol, parameters, statistics, library version
    items.parquet        item_index:int32 (1..n; 0 is padding), item_id:string, title:string|null,
                         train_count:int64 (clicks in train-split sessions), optional extra text columns
    sessions.parquet     session_index:int64, session_id:string, split:string, items:list<int32>
    examples.parquet     example_id:int64 (stable, 0..N-1), split:string, session_index:int64,
                         prefix:list<int32> (item indices, chronological), target:int32 (item index)

Splits are ``train``, ``valid`` and ``test``. Every item index in sessions/examples is in 1..n.
"""

MANIFEST = "manifest.json"
ITEMS = "items.parquet"
SESSIONS = "sessions.parquet"
EXAMPLES = "examples.parquet"

SPLITS = ("train", "valid", "test")
FORMAT_VERSION = 1
