#!/usr/bin/env python3
"""Creates the tiny random-weight sentence-transformers models that rag-node's model tests load
(rag-node/tests/model_variants.rs), with their reference vectors computed by
sentence-transformers on PyTorch. Run once, outside the test command; the output is committed
under rag-node/tests/fixtures/tiny-models/ (a few hundred KB) and the tests only read it.

Each variant exercises one thing the node must read from a model directory:
  bert-mean    BERT, mean pooling, normalized (the all-MiniLM-L6-v2 recipe), a 24-token window
  bert-cls     the same weights, CLS pooling, not normalized (so: another model id)
  bert-max     the same weights, max pooling, normalized
  xlmr-e5      XLM-RoBERTa (position ids after the padding id, a Unigram tokenizer), mean
               pooling, normalized, E5-style prompts "query: " / "passage: "

Set-up (a few GB, once):
    python3 -m venv ~/.cache/rag-node/venv-ref
    ~/.cache/rag-node/venv-ref/bin/pip install torch sentence-transformers
Run:
    ~/.cache/rag-node/venv-ref/bin/python scripts/make-tiny-models.py
"""
import json
import os
import shutil

import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers import models as st_models
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import (BertConfig, BertModel, PreTrainedTokenizerFast, XLMRobertaConfig,
                          XLMRobertaModel)

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "rag-node", "tests",
                    "fixtures", "tiny-models")
HIDDEN, LAYERS, HEADS, INTERMEDIATE, WINDOW = 32, 2, 4, 64, 24

# What the tokenizers learn from: mixed Portuguese and English, codes and paths.
CORPUS = [
    "A configuração do servidor fica em /etc/ssh/sshd_config e exige reinício.",
    "O erro ERR-4312 aparece quando o disco está cheio; libere espaço e tente novamente.",
    "Instalação: execute apt-get install rag-node e verifique o serviço com systemctl status.",
    "The node embeds each document once and every replica applies the result from the log.",
    "Search never waits for ingestion: uploads are queued and processed one at a time.",
    "Edite o arquivo /etc/fstab para montar a partição na inicialização do sistema.",
    "Memória insuficiente: aumente o limite do contêiner ou reduza o tamanho do lote.",
    "Backups go to S3 on a schedule; a restored node answers the same queries identically.",
    "Informação, atenção, coração, ação, São Paulo, João, açúcar, pão, mãe, irmão.",
    "Kubernetes operators reconcile the desired state with what the API server holds.",
] * 20

TEXTS = [
    "",
    "   ",
    "Onde fica a configuração do sshd?",
    "How do I restore a cluster from a backup?",
    "ERR-4312 /etc/fstab sshd_config",
    "Informação sobre a instalação em São Paulo 🚀",
    # Longer than the window: truncated at 24 tokens, prompt included.
    " ".join(CORPUS[:4]),
]


def bert_tokenizer():
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok.train_from_iterator(CORPUS, trainers.WordPieceTrainer(vocab_size=400,
                                                              special_tokens=special))
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]",
                                   cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")


def xlmr_tokenizer():
    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    special = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    tok.train_from_iterator(CORPUS, trainers.UnigramTrainer(vocab_size=400, special_tokens=special,
                                                            unk_token="<unk>"))
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", 0), ("</s>", 2)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>", pad_token="<pad>", cls_token="<s>",
                                   sep_token="</s>", mask_token="<mask>")


def write(name, make_encoder, tokenizer, pooling, normalize, prompts=None):
    out = os.path.join(ROOT, name)
    shutil.rmtree(out, ignore_errors=True)
    tmp = out + ".encoder"
    torch.manual_seed(7)
    encoder = make_encoder(len(tokenizer))
    encoder.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    word = st_models.Transformer(tmp, max_seq_length=WINDOW)
    modules = [word, st_models.Pooling(HIDDEN, pooling_mode=pooling)]
    if normalize:
        modules.append(st_models.Normalize())
    st = SentenceTransformer(modules=modules, prompts=prompts or {}, device="cpu")
    st.save(out)
    shutil.rmtree(tmp)
    # Only what the node reads (and the tests need) stays in the repository.
    for f in os.listdir(out):
        if f not in {"model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json",
                     "modules.json",
                     "1_Pooling", "2_Normalize", "sentence_bert_config.json",
                     "config_sentence_transformers.json"}:
            p = os.path.join(out, f)
            shutil.rmtree(p) if os.path.isdir(p) else os.remove(p)

    def enc(**kw):
        return st.encode(TEXTS, convert_to_numpy=True, normalize_embeddings=False, **kw).tolist()

    ref = {"texts": TEXTS, "raw": enc()}
    if prompts:
        ref["query"] = enc(prompt_name="query")
        ref["passage"] = enc(prompt_name="document")
    else:
        ref["query"] = ref["passage"] = ref["raw"]
    with open(os.path.join(out, "reference.json"), "w") as f:
        json.dump(ref, f)
    print(name, "written")


def bert(vocab):
    return BertModel(BertConfig(vocab_size=vocab, hidden_size=HIDDEN, num_hidden_layers=LAYERS,
                                num_attention_heads=HEADS, intermediate_size=INTERMEDIATE,
                                max_position_embeddings=64, hidden_act="gelu"))


def xlmr(vocab):
    return XLMRobertaModel(XLMRobertaConfig(
        vocab_size=vocab, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
        intermediate_size=INTERMEDIATE, max_position_embeddings=64 + 2, hidden_act="gelu",
        pad_token_id=1, bos_token_id=0, eos_token_id=2, type_vocab_size=1, layer_norm_eps=1e-5))


def main():
    os.makedirs(ROOT, exist_ok=True)
    bt = bert_tokenizer()
    write("bert-mean", bert, bt, "mean", True)
    write("bert-cls", bert, bt, "cls", False)
    write("bert-max", bert, bt, "max", True)
    write("xlmr-e5", xlmr, xlmr_tokenizer(), "mean", True,
          prompts={"query": "query: ", "document": "passage: "})


if __name__ == "__main__":
    main()
