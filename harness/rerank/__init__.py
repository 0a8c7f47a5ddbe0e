"""Best-of-n reranking: a pool of samples (``pool``), the one scoring path (``harness.scorers``),
``@bo<n>`` selection (``select``), the job (``job``) and its command line (``cli``)."""
from harness.rerank.cli import parse_ns, register, rerank_scorer
from harness.rerank.job import RerankResult, rerank
from harness.rerank.pool import CANDIDATES_DIR, JANUS_SAMPLING, CandidatePool, RerankError
from harness.rerank.select import select_best, virtual_model_name

__all__ = ["CANDIDATES_DIR", "JANUS_SAMPLING", "CandidatePool", "RerankError", "RerankResult", "parse_ns",
           "register", "rerank", "rerank_scorer", "select_best", "virtual_model_name"]
