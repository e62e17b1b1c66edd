"""The taxonomy table: size, names, kinds, reserved keys, compiled lookups and the generated TAXONOMY.md."""

from pathlib import Path

from s2vec_core import taxonomy as tx

ROOT = Path(__file__).resolve().parents[1]


def test_at_least_60_channels_with_unique_names_and_valid_kinds():
    assert len(tx.CHANNELS) >= 60
    assert len(set(tx.CHANNEL_NAMES)) == len(tx.CHANNEL_NAMES)
    assert tx.CHANNEL_NAMES == tuple(c.name for c in tx.CHANNELS)
    assert {c.kind for c in tx.CHANNELS} == set(tx.KINDS)
    for c in tx.CHANNELS:
        assert c.rules, c.name
        assert not c.spread or c.kind == "area_m2", c.name
    assert tx.TAXONOMY_VERSION


def test_required_groups_are_covered():
    keys_by_kind = {k: {key for c in tx.CHANNELS if c.kind == k for key, _ in c.rules} for k in tx.KINDS}
    assert {
        "amenity",
        "shop",
        "tourism",
        "leisure",
        "office",
        "craft",
        "healthcare",
        "public_transport",
        "building",
        "highway",
        "railway",
    } <= keys_by_kind["count"]
    assert {"highway", "railway", "waterway"} <= keys_by_kind["length_m"]
    assert {"building", "landuse", "natural"} <= keys_by_kind["area_m2"]


def test_no_channel_reads_a_reserved_target_key():
    for c in tx.CHANNELS:
        for key, _ in c.rules:
            for reserved in tx.RESERVED_TARGET_KEYS:
                hit = key.startswith(reserved) if reserved.endswith(":") else key == reserved
                assert not hit, (c.name, key)
    assert not any(k.startswith("addr:") or k == "building:levels" for k in tx.FILTER_KEYS)


def test_filter_keys_are_exactly_the_rule_keys():
    assert set(tx.FILTER_KEYS) == {k for c in tx.CHANNELS for k, _ in c.rules}


def test_compiled_lookups_reproduce_every_rule():
    # Each rule, applied on its own to a one-tag object, must reach its channel through the right lookup.
    lookup = {
        "count": (tx.NODE_LOOKUP, tx.AREA_LOOKUP),
        "length_m": (tx.WAY_LOOKUP,),
        "area_m2": (tx.AREA_LOOKUP,),
    }
    for i, c in enumerate(tx.CHANNELS):
        for key, values in c.rules:
            for v in values or ("some_value",):
                for lk in lookup[c.kind]:
                    assert i in tx.match([(key, v)], lk), (c.name, key, v)
            if values is None:
                assert i not in tx.match([(key, "no")], lookup[c.kind][0]), c.name

    # Geometry separation: nodes never feed lengths or areas, ways never feed counts.
    def kinds(lk):
        return {tx.CHANNELS[i].kind for d in lk.values() for t in d.values() for i in t}

    assert kinds(tx.NODE_LOOKUP) == {"count"}
    assert kinds(tx.WAY_LOOKUP) == {"length_m"}


def test_an_object_feeds_every_matching_channel_once():
    tags = [("amenity", "restaurant"), ("building", "retail"), ("shop", "bakery")]
    got = [tx.CHANNEL_NAMES[i] for i in tx.match(tags, tx.AREA_LOOKUP)]
    assert len(got) == len(set(got))
    assert {
        "amenity_food",
        "amenity_any",
        "shop_food",
        "shop_any",
        "building_count",
        "building_commercial",
        "building_footprint_m2",
        "building_nonresidential_footprint_m2",
    } == set(got)
    assert tx.match([("addr:street", "Main"), ("building:levels", "3")], tx.AREA_LOOKUP) == []


def test_taxonomy_md_is_generated_from_the_table():
    assert (ROOT / "TAXONOMY.md").read_text() == tx.markdown()
    for name in tx.CHANNEL_NAMES:
        assert f"`{name}`" in tx.markdown()
