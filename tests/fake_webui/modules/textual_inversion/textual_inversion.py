"""Fake of modules/textual_inversion/textual_inversion.py (1.10.1): the EmbeddingDatabase behind
sd_hijack.model_hijack.embedding_db.

load_textual_inversion_embeddings(force_reload=False): the real one rescans only when a folder's
mtime changed unless force_reload; it then rebuilds word_embeddings (name -> Embedding) from
.pt/.bin/.safetensors/image files, skipping ones whose width doesn't match the model. The fake
records each call in load_calls and, when it rescans, lists the file names (no loading, no shape
check): word_embeddings maps name -> path.
"""
import os

EMBEDDING_EXTENSIONS = (".pt", ".bin", ".safetensors", ".png", ".webp", ".jxl", ".avif")


class DirWithTextualInversionEmbeddings:
    def __init__(self, path):
        self.path = path
        self.mtime = None

    def has_changed(self):
        if not os.path.isdir(self.path):
            return False
        return os.path.getmtime(self.path) != self.mtime

    def update(self):
        if os.path.isdir(self.path):
            self.mtime = os.path.getmtime(self.path)


class EmbeddingDatabase:
    def __init__(self):
        self.ids_lookup = {}
        self.word_embeddings = {}
        self.skipped_embeddings = {}
        self.expected_shape = -1
        self.embedding_dirs = {}
        self.previously_displayed_embeddings = ()
        self.load_calls = []

    def add_embedding_dir(self, path):
        self.embedding_dirs[path] = DirWithTextualInversionEmbeddings(path)

    def clear_embedding_dirs(self):
        self.embedding_dirs.clear()

    def load_textual_inversion_embeddings(self, force_reload=False):
        self.load_calls.append(force_reload)
        if not force_reload and not any(d.has_changed() for d in self.embedding_dirs.values()):
            return
        self.ids_lookup.clear()
        self.word_embeddings.clear()
        self.skipped_embeddings.clear()
        for embdir in self.embedding_dirs.values():
            for root, _, files in os.walk(embdir.path, followlinks=True):
                for fn in files:
                    name, ext = os.path.splitext(fn)
                    if ext.lower() in EMBEDDING_EXTENSIONS and os.stat(os.path.join(root, fn)).st_size > 0:
                        self.word_embeddings[name] = os.path.join(root, fn)
            embdir.update()
        ordered = sorted(self.word_embeddings.items(), key=lambda kv: kv[0].lower())
        self.word_embeddings.clear()  # same dict object, as the real one keeps it
        self.word_embeddings.update(ordered)
