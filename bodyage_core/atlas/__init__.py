"""Group atlases (templates by iterative registration), population maps, statistics and region
summaries.

Public API::

    build_atlas(members, out_dir, group="all", config=None, transform_dir=None, reporter=None)
    AtlasMember, AtlasConfig, load_atlas(atlas_dir), choose_reference, majority_vote
    population_maps(maps, ages=None, gaps=None, age_edges=(60, 70), gap_threshold=None,
                    gap_quantile=None) -> {subgroup: {mean, std, n, index}}
    mean_std, age_bands, gap_classes, permutation_test(a, b, n_permutations=1000, ...),
    age_trend(maps, ages, p_threshold=0.01, mask=None, correction='none'|'tfce')
    -> {cov, t, p, map, n}, tfce(stat, mask)
    region_shares(importance, labels, names, body_mask=None), importance_inside_mask,
    uniform_baseline, write_shares, plot_shares
    Workspace stages: build_atlases, register_subjects (bodyage_core.atlas.workspace),
    build_population_maps, compare_gap_groups (bodyage_core.atlas.cohort_maps)
"""

from bodyage_core.atlas.build import (
    AtlasConfig,
    AtlasMember,
    build_atlas,
    choose_reference,
    load_atlas,
    majority_vote,
)
from bodyage_core.atlas.population import population_maps, subgroup_maps
from bodyage_core.atlas.regions import (
    importance_inside_mask,
    plot_shares,
    region_shares,
    uniform_baseline,
    write_shares,
)
from bodyage_core.atlas.stats import (
    age_bands,
    age_trend,
    gap_classes,
    mean_std,
    permutation_test,
    tfce,
)

__all__ = [
    "AtlasConfig", "AtlasMember", "age_bands", "age_trend", "build_atlas", "choose_reference", "gap_classes",
    "importance_inside_mask", "load_atlas", "majority_vote", "mean_std", "permutation_test",
    "plot_shares", "population_maps", "region_shares", "subgroup_maps", "tfce", "uniform_baseline",
    "write_shares",
]
