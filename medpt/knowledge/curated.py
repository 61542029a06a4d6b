"""Curated class knowledge: the source the shipped JSON files are built from.

Every class of every dataset is mapped to a clinical *entity* (the same melanoma serves ISIC 2018,
DermaMNIST and Derm7pt). An entity has a prompt-friendly name and ten visual findings written for
the imaging modality of the dataset, ordered from the most characteristic one. From them:

* ``descriptions``: every finding x every phrasing in :data:`PHRASINGS` (10 x 6 = 60 sentences per
  class, the same count for every class, as CoPrompt's ``torch.stack`` and BiomedCoOp's
  ``N_PROMPTS = 50`` need). The phrasings only state that a finding *may* be seen or *can* be
  consistent with the class, never frequencies, so each sentence stays correct for findings that
  are characteristic but not always present;
* ``vip_descriptors``: the first four findings, as short visual-symptom phrases (the official ViP
  files hold four per class, e.g. "Presence of consolidation");
* ``clinical_concepts``: the first five findings (XCoOp's "a photo of a {}, <concept>, ..." prompt).

Medical content: written for this project from standard radiology, dermoscopy, ophthalmology,
gastro-intestinal endoscopy, colorectal histopathology and obstetric ultrasound teaching
(ICDR scale for diabetic retinopathy, the 4-2-1 rule for severe NPDR, dermoscopy pattern
analysis); no statistics. Rebuild the JSON with ``python -m medpt.knowledge.build``.
"""
from __future__ import annotations

from typing import Dict, List, Tuple

#: modality key -> (phrase with article, domain phrase for the hand templates)
MODALITIES: Dict[str, Tuple[str, str]] = {
    "cxr": ("a chest X-ray", "chest X-ray"),
    "derm": ("a dermoscopic image", "skin lesion"),
    "fundus": ("a colour fundus photograph", "fundus photograph"),
    "histo": ("an H&E-stained colorectal histology image", "colorectal histopathology image"),
    "endo": ("an endoscopic image", "gastrointestinal endoscopy finding"),
    "fetal": ("an obstetric ultrasound image", "obstetric ultrasound plane"),
}

#: ways of stating "finding f can be seen in entity e on modality m" ({a_mod}, {ent}, {f}).
PHRASINGS: Tuple[str, ...] = (
    "{A_mod} of {ent} may show {f}.",
    "In {ent}, {a_mod} can reveal {f}.",
    "Findings of {ent} on {a_mod} can include {f}.",
    "{F} on {a_mod} can be consistent with {ent}.",
    "{Ent} should be considered when {a_mod} shows {f}.",
    "Visual sign of {ent} on {a_mod}: {f}.",
)

#: entity key -> (prompt-friendly name, 10 findings, most characteristic first)
ENTITIES: Dict[str, Tuple[str, List[str]]] = {
    # ---- chest X-ray -------------------------------------------------------------------
    "normal_cxr": ("normal lungs", [
        "clear, well-aerated lung fields", "sharp costophrenic angles", "well-defined diaphragmatic contours",
        "a cardiac silhouette of normal size and contour", "absence of focal consolidation",
        "absence of pleural effusion", "bronchovascular markings that taper towards the periphery",
        "clearly visible heart borders", "a midline trachea", "symmetric aeration of both lungs"]),
    "bacterial_pneumonia": ("bacterial pneumonia", [
        "lobar or segmental consolidation", "air bronchograms within consolidated lung",
        "a dense focal opacity confined to one lobe", "a parapneumonic pleural effusion",
        "loss of the adjacent heart border or hemidiaphragm outline",
        "a round pneumonia, a spherical opacity seen mainly in children",
        "unilateral rather than diffuse involvement", "homogeneous opacification of a lung segment",
        "cavitation within the consolidated area", "blunting of the costophrenic angle by fluid"]),
    "viral_pneumonia": ("viral pneumonia", [
        "bilateral diffuse interstitial opacities", "peribronchial thickening (peribronchial cuffing)",
        "streaky perihilar opacities", "hyperinflated lungs with flattened diaphragms",
        "patchy subsegmental atelectasis", "a reticular or reticulonodular interstitial pattern",
        "absence of a single dense lobar consolidation", "symmetric involvement of both lungs",
        "hazy ground-glass opacities", "little or no pleural effusion"]),
    "pneumonia": ("pneumonia", [
        "areas of airspace consolidation", "air bronchograms", "focal or patchy airspace opacities",
        "interstitial opacities", "a pleural effusion", "loss of the heart border or diaphragm outline",
        "peribronchial thickening", "increased opacity in one or more lobes",
        "reduced aeration of the affected lung region", "obscured lung markings within the affected zone"]),
    "covid": ("COVID-19 pneumonia", [
        "bilateral ground-glass opacities", "a peripheral, subpleural distribution of opacities",
        "lower-zone predominance of opacities", "multifocal patchy consolidation",
        "hazy opacities progressing to consolidation", "bilateral rather than unilateral involvement",
        "reticular opacities in later stages", "usually no pleural effusion", "usually no cavitation",
        "diffuse bilateral opacification in severe disease resembling acute respiratory distress syndrome"]),
    # ---- dermoscopy ----------------------------------------------------------------------
    "melanoma": ("melanoma", [
        "an atypical, irregular pigment network", "asymmetry of colours and structures",
        "irregular streaks or pseudopods at the periphery", "a blue-white veil",
        "irregular dots and globules", "multiple colours such as light and dark brown, black, blue, grey and red",
        "regression structures such as white scar-like areas and grey peppering",
        "atypical vessels such as dotted or polymorphous vessels", "irregular blotches of pigment",
        "a negative (inverse) pigment network"]),
    "nevus": ("melanocytic nevus", [
        "a regular, symmetric pigment network", "a uniform brown colour", "symmetry of colour and structure",
        "regular brown dots and globules", "a globular pattern of evenly sized globules",
        "a homogeneous pattern", "a network that fades gradually at the periphery",
        "a smooth, well-defined border", "comma-shaped vessels in a dermal nevus",
        "only one or two shades of brown"]),
    "bcc": ("basal cell carcinoma", [
        "arborizing, tree-like branching vessels", "large blue-grey ovoid nests",
        "leaf-like areas at the periphery", "spoke-wheel areas", "ulceration",
        "multiple blue-grey globules", "absence of a pigment network",
        "shiny white-red structureless areas", "short fine superficial telangiectasias",
        "a pearly, translucent background"]),
    "akiec": ("actinic keratosis or intraepithelial carcinoma", [
        "a strawberry pattern of red pseudo-network around hair follicles", "white-to-yellow surface scale",
        "erythema surrounding hair follicle openings", "targetoid hair follicles",
        "white rosettes under polarised light", "glomerular (coiled) vessels in intraepithelial carcinoma",
        "dotted vessels arranged in clusters", "a rough, keratotic surface",
        "grey-brown dots around follicles in pigmented lesions", "background erythema on sun-damaged skin"]),
    "bkl": ("benign keratosis", [
        "milia-like cysts", "comedo-like openings", "fissures and ridges forming a brain-like pattern",
        "a sharp, well-demarcated border", "moth-eaten borders in a solar lentigo",
        "fingerprint-like structures", "hairpin vessels surrounded by a white halo",
        "a waxy, stuck-on appearance", "a homogeneous light-brown colour",
        "granular grey-brown dots in a regressing lichen planus-like keratosis"]),
    "sk": ("seborrheic keratosis", [
        "milia-like cysts", "comedo-like openings", "fissures and ridges forming a brain-like pattern",
        "a sharp, well-demarcated border", "hairpin vessels surrounded by a white halo",
        "a waxy, stuck-on appearance", "fingerprint-like structures", "moth-eaten borders",
        "absence of a true pigment network", "a light-brown to dark-brown colour"]),
    "df": ("dermatofibroma", [
        "a central white scar-like patch", "a delicate peripheral pigment network", "a central white network",
        "a light-brown peripheral rim", "dotted vessels within the lesion", "ring-like globules at the periphery",
        "a firm, slightly raised papule", "a symmetric overall pattern", "shiny white lines in the centre",
        "a pink to brown colour"]),
    "vasc": ("vascular lesion", [
        "red, purple or blue lacunae", "well-demarcated red lagoons", "whitish septa between lacunae",
        "a blue-black colour in a thrombosed lesion", "red-blue homogeneous areas", "absence of a pigment network",
        "a white collarette around a pyogenic granuloma", "a red homogeneous area crossed by white lines",
        "sharp, lobulated borders", "a dark red to maroon colour"]),
    "misc_skin": ("a miscellaneous benign skin lesion", [
        "a central white scar-like patch of a dermatofibroma", "red or purple lacunae of a vascular lesion",
        "a faint light-brown reticular pattern of a lentigo", "homogeneous light-brown pigmentation of melanosis",
        "a delicate peripheral pigment network", "a symmetric, benign-appearing pattern",
        "absence of a blue-white veil", "absence of atypical streaks", "a uniform colour with few shades",
        "sharp, regular borders"]),
    # ---- fundus ----------------------------------------------------------------------------
    "normal_fundus": ("a normal fundus", [
        "a sharply outlined optic disc with a healthy pink neuroretinal rim", "a small physiological optic cup",
        "a clear macula with a central foveal reflex", "retinal arteries and veins of normal calibre",
        "absence of haemorrhages and exudates", "absence of drusen", "an evenly coloured orange-red background",
        "smooth, regular vessel branching", "absence of microaneurysms", "a clear view through transparent media"]),
    "no_dr": ("a retina without diabetic retinopathy", [
        "absence of microaneurysms", "absence of dot-and-blot haemorrhages", "absence of hard exudates",
        "absence of cotton-wool spots", "absence of new vessels on the disc or elsewhere",
        "retinal vessels of normal calibre without venous beading", "a clear macula with a foveal reflex",
        "a healthy optic disc with a pink rim", "an evenly coloured background", "smooth, regular vessel branching"]),
    "mild_dr": ("mild non-proliferative diabetic retinopathy", [
        "microaneurysms as the only abnormality", "a few tiny, sharply defined red dots",
        "microaneurysms at the posterior pole", "tiny red dots near the macula",
        "no haemorrhages other than microaneurysms", "absence of venous beading", "absence of new vessels",
        "absence of cotton-wool spots", "an otherwise normal optic disc", "otherwise normal retinal vessels"]),
    "moderate_dr": ("moderate non-proliferative diabetic retinopathy", [
        "dot-and-blot intraretinal haemorrhages", "hard exudates", "cotton-wool spots",
        "microaneurysms in several quadrants", "venous beading confined to a single quadrant",
        "flame-shaped haemorrhages", "circinate rings of hard exudates", "exudates near the macula",
        "absence of new vessels", "fewer haemorrhages than the four-quadrant pattern of severe disease"]),
    "severe_dr": ("severe non-proliferative diabetic retinopathy", [
        "numerous intraretinal haemorrhages in all four quadrants", "venous beading in two or more quadrants",
        "intraretinal microvascular abnormalities", "multiple cotton-wool spots", "extensive hard exudates",
        "large blot haemorrhages", "venous loops and reduplication", "widespread microaneurysms",
        "absence of new vessels", "absence of vitreous haemorrhage"]),
    "pdr": ("proliferative diabetic retinopathy", [
        "neovascularisation of the optic disc", "neovascularisation elsewhere in the retina",
        "preretinal haemorrhage", "vitreous haemorrhage", "fibrovascular proliferation",
        "tractional retinal detachment", "panretinal photocoagulation laser scars",
        "fine, irregular loops of new vessels", "a boat-shaped subhyaloid haemorrhage",
        "extensive intraretinal haemorrhages and exudates"]),
    "dr": ("diabetic retinopathy", [
        "microaneurysms", "dot-and-blot haemorrhages", "hard exudates", "cotton-wool spots",
        "venous beading", "intraretinal microvascular abnormalities",
        "neovascularisation of the disc or elsewhere", "exudates near the macula",
        "panretinal photocoagulation laser scars", "vitreous haemorrhage"]),
    "amd": ("age-related macular degeneration", [
        "drusen at the macula", "large, confluent soft drusen", "pigmentary changes at the macula",
        "geographic atrophy exposing choroidal vessels", "haemorrhage at the macula in neovascular disease",
        "a grey-green choroidal neovascular membrane", "a disciform fibrovascular scar",
        "small hard drusen", "exudates near the macula in neovascular disease", "loss of the foveal reflex"]),
    "glaucoma": ("glaucoma", [
        "an enlarged cup-to-disc ratio", "thinning or notching of the neuroretinal rim",
        "a deep, excavated optic cup", "a vertically elongated cup", "a splinter haemorrhage at the disc margin",
        "nasal displacement of the vessels on the disc", "bayoneting of vessels at the cup margin",
        "peripapillary atrophy", "dark wedge-shaped retinal nerve fibre layer defects", "a pale, enlarged cup"]),
    "cataract": ("cataract", [
        "a hazy, blurred fundus image", "reduced visibility of the retinal vessels",
        "low contrast of the optic disc", "a diffuse whitish or yellowish veil over the image",
        "loss of fine vessel detail", "uneven illumination caused by lens opacity", "a barely visible macula",
        "retinal details obscured by a dense lens opacity", "a washed-out, low-contrast image",
        "only the large vessels near the disc remaining visible"]),
    "hypertension": ("hypertensive retinopathy", [
        "generalised arteriolar narrowing", "arteriovenous nicking", "copper- or silver-wiring of arterioles",
        "flame-shaped haemorrhages", "cotton-wool spots", "hard exudates forming a macular star",
        "optic disc swelling in malignant hypertension", "focal arteriolar narrowing",
        "a reduced arteriole-to-venule calibre ratio", "an increased arteriolar light reflex"]),
    "myopia": ("pathological myopia", [
        "a tilted optic disc", "a peripapillary myopic crescent", "a tessellated (tigroid) fundus",
        "chorioretinal atrophy at the posterior pole", "lacquer cracks", "a posterior staphyloma",
        "a pigmented Fuchs spot at the macula", "myopic choroidal neovascularisation",
        "patchy atrophy exposing large choroidal vessels", "straightened, stretched vessels leaving the disc"]),
    "other_fundus": ("other retinal diseases or abnormalities", [
        "a retinal vein occlusion with widespread haemorrhages", "an epiretinal membrane with a glistening macular reflex",
        "a retinal detachment", "laser photocoagulation scars", "optic disc pallor from optic atrophy",
        "asteroid hyalosis with bright vitreous opacities", "pigmented chorioretinal scars",
        "myelinated retinal nerve fibres", "bone-spicule pigmentation of retinitis pigmentosa", "a macular hole"]),
    # ---- colorectal histopathology ---------------------------------------------------------
    "normal_colon": ("normal colonic mucosa", [
        "regularly spaced, test-tube-shaped crypts", "abundant goblet cells", "small, basally located nuclei",
        "a uniform crypt architecture", "a lamina propria with scattered inflammatory cells",
        "crypts reaching down to the muscularis mucosae", "absence of nuclear atypia",
        "an intact surface epithelium", "round crypt profiles in cross-section",
        "a low nuclear-to-cytoplasmic ratio"]),
    "serrated": ("a serrated colorectal lesion", [
        "saw-tooth infolding of the crypt epithelium", "star-shaped crypt lumens", "dilated crypt bases",
        "L-shaped or inverted T-shaped crypt bases", "crypts spreading horizontally along the muscularis mucosae",
        "mucin-rich microvesicular epithelium", "eosinophilic cytoplasm in a traditional serrated adenoma",
        "ectopic crypt formations", "serration extending to the crypt base", "a goblet-cell-rich epithelium"]),
    "adenocarcinoma": ("colorectal adenocarcinoma", [
        "irregular, infiltrating malignant glands", "a desmoplastic stroma", "cribriform gland architecture",
        "dirty intraluminal necrosis", "marked nuclear pleomorphism", "prominent nucleoli", "frequent mitoses",
        "loss of the normal crypt architecture", "tumour budding at the invasive front",
        "pools of extracellular mucin in a mucinous type"]),
    "adenoma": ("colorectal adenoma", [
        "crowded tubular glands", "elongated, pencil-shaped, hyperchromatic nuclei",
        "nuclear pseudostratification", "reduced goblet-cell mucin", "villous projections in a villous adenoma",
        "an abrupt transition from normal mucosa", "mitoses in the upper part of the crypts",
        "dysplasia reaching the surface epithelium", "an intact muscularis mucosae without invasion",
        "a tubular or tubulovillous architecture"]),
    # ---- GI endoscopy ----------------------------------------------------------------------------
    "dyed_lifted_polyp": ("a dyed lifted polyp", [
        "a polyp lifted by a blue-dyed submucosal injection", "a light-blue submucosal cushion beneath the lesion",
        "a raised, bulging mucosa with a blue tint", "polyp margins outlined against blue-stained tissue",
        "an intact mucosal surface over the lifted area", "diffuse blue colouring of the submucosa",
        "a lesion prepared for endoscopic mucosal resection",
        "an elevated lesion surrounded by normal-looking mucosa", "well-defined borders of the elevated area",
        "an injection needle or snare near the lifted area"]),
    "dyed_resection_margin": ("a dyed resection margin", [
        "a mucosal defect left after polyp removal", "blue-stained submucosa at the resection base",
        "resection edges outlined by blue dye", "a flat or slightly depressed wound surface",
        "residual blue colouring around the margin", "exposed submucosa without a raised lesion",
        "small vessels or minor oozing at the resection base", "clips closing the mucosal defect",
        "a round resection area", "absence of a remaining polyp"]),
    "esophagitis": ("oesophagitis", [
        "mucosal breaks above the gastro-oesophageal junction", "linear erosions along the oesophageal folds",
        "red streaks extending upwards from the Z-line", "erythema of the distal oesophagus",
        "whitish or yellowish fibrin covering erosions", "a blurred, irregular Z-line",
        "confluent mucosal breaks in severe grades", "friable, inflamed mucosa", "oedematous mucosa",
        "loss of the normal vascular pattern"]),
    "normal_cecum": ("a normal caecum", [
        "the appendiceal orifice", "the ileocaecal valve", "pink, smooth colonic mucosa",
        "a visible submucosal vascular pattern", "converging caecal folds", "the blind-ending pouch of the colon",
        "absence of polyps or inflammation", "a wide lumen", "a crescent-shaped appendiceal opening",
        "the terminal ileum through the valve"]),
    "normal_pylorus": ("a normal pylorus", [
        "the round pyloric opening", "the gastric antrum surrounding the pylorus", "smooth, pink gastric mucosa",
        "folds converging on the pyloric channel", "a dark central lumen leading to the duodenum",
        "a pylorus opening and closing with peristalsis", "absence of ulcers or erosions",
        "a glistening mucus layer", "a symmetric muscular ring", "absence of bleeding"]),
    "normal_zline": ("a normal Z-line", [
        "the squamocolumnar junction", "a sharp transition from pale oesophageal to red gastric mucosa",
        "a regular, slightly wavy Z-line", "pale pink squamous oesophageal mucosa",
        "salmon-red columnar gastric mucosa", "absence of mucosal breaks",
        "no tongues of columnar mucosa extending upwards", "fine longitudinal palisade vessels in the distal oesophagus",
        "the junction at the top of the gastric folds", "a smooth mucosal surface"]),
    "polyp": ("a colorectal polyp", [
        "a raised mucosal lesion protruding into the lumen", "a pedunculated polyp on a stalk",
        "a sessile, broad-based polyp", "a lobulated or smooth surface", "a redder colour than the surrounding mucosa",
        "a visible surface pit pattern", "a round or oval outline", "no blue dye around the lesion",
        "surface vessels on the polyp", "a polyp within the colonic lumen"]),
    "ulcerative_colitis": ("ulcerative colitis", [
        "diffuse erythema of the colonic mucosa", "loss of the normal vascular pattern",
        "granular, friable mucosa", "contact bleeding", "superficial ulcers", "mucopurulent exudate",
        "continuous involvement without skip areas", "pseudopolyps in long-standing disease",
        "oedematous mucosa", "spontaneous bleeding in severe disease"]),
    # ---- obstetric ultrasound ---------------------------------------------------------------------
    "fetal_brain": ("the fetal brain plane", [
        "the midline falx cerebri", "the cavum septi pellucidi", "the thalami",
        "the lateral ventricles with the choroid plexus", "the oval outline of the fetal skull",
        "the cerebellum in a transcerebellar view", "the cisterna magna", "a symmetric transverse section of the head",
        "a bright, echogenic calvarium", "landmarks for biparietal diameter and head circumference"]),
    "fetal_femur": ("the fetal femur plane", [
        "the echogenic femoral diaphysis", "a long, straight, bright bone", "acoustic shadowing behind the bone",
        "the femur imaged along its full length", "both ends of the femoral shaft", "thigh soft tissue around the bone",
        "an ossified shaft with non-ossified ends", "a nearly horizontal bone", "landmarks for femur length",
        "a single long bone without the skull or spine"]),
    "fetal_abdomen": ("the fetal abdomen plane", [
        "the fluid-filled stomach bubble", "the umbilical vein within the liver",
        "a round transverse section of the abdomen", "the fetal spine in cross-section",
        "short rib segments at each side", "the liver occupying much of the section", "the portal sinus",
        "landmarks for abdominal circumference", "the fetal aorta in front of the spine",
        "an abdominal section without the heart"]),
    "fetal_thorax": ("the fetal thorax plane", [
        "the four-chamber view of the heart", "the fetal lungs on both sides of the heart",
        "the interventricular septum", "ribs surrounding the chest", "the descending aorta in front of the spine",
        "a cardiac axis pointing to the left", "the outflow tracts of the heart", "the atrioventricular valves",
        "the heart within the chest cavity", "the fetal spine in cross-section behind the heart"]),
    "maternal_cervix": ("the maternal cervix", [
        "the cervical canal", "the internal and external os", "landmarks for cervical length",
        "the endocervical mucosa", "the maternal bladder near the cervix", "a sagittal view of the cervix",
        "funnelling at the internal os in a short cervix", "the lower uterine segment",
        "the presenting fetal part above the cervix", "a transvaginal view of the cervix"]),
    "fetal_other": ("another fetal ultrasound plane", [
        "the fetal face or profile", "the fetal spine in a longitudinal section", "the fetal kidneys",
        "the fetal hands or feet", "the umbilical cord", "the placenta", "the fetal lips and nose",
        "pockets of amniotic fluid", "the fetal orbits",
        "a view outside the standard brain, femur, abdomen and thorax planes"]),
}

#: dataset id -> (modality key, [(CILMP class name, entity key)] in label order, source note)
DATASETS: Dict[str, Tuple[str, List[Tuple[str, str]]]] = {
    "adam": ("fundus", [("normal fundus", "normal_fundus"),
                        ("fundus with age-related macular degeneration", "amd")]),
    "aptos2019": ("fundus", [("no diabetic retinopathy", "no_dr"), ("mild diabetic retinopathy", "mild_dr"),
                             ("moderate diabetic retinopathy", "moderate_dr"),
                             ("severe diabetic retinopathy", "severe_dr"),
                             ("proliferative diabetic retinopathy", "pdr")]),
    "chaoyang": ("histo", [("normal", "normal_colon"), ("serrated", "serrated"),
                           ("adenocarcinoma", "adenocarcinoma"), ("adenoma", "adenoma")]),
    "cpn_xray": ("cxr", [("normal", "normal_cxr"), ("covid", "covid"), ("pneumonia", "pneumonia")]),
    "dermamnist": ("derm", [("actinic keratoses and intraepithelial carcinoma", "akiec"),
                            ("basal cell carcinoma", "bcc"), ("benign keratosis-like lesions", "bkl"),
                            ("dermatofibroma", "df"), ("melanoma", "melanoma"), ("melanocytic nevi", "nevus"),
                            ("vascular lesions", "vasc")]),
    "derm7pt": ("derm", [("carcinoma", "bcc"), ("keratosis", "sk"), ("melanoma", "melanoma"),
                         ("miscellaneous", "misc_skin"), ("nevus", "nevus")]),
    "fetal_us": ("fetal", [("Fetal brain", "fetal_brain"), ("Fetal femur", "fetal_femur"),
                           ("Fetal abdomen", "fetal_abdomen"), ("Fetal thorax", "fetal_thorax"),
                           ("Maternal cervix", "maternal_cervix"), ("Other planes", "fetal_other")]),
    "isic2018": ("derm", [("Melanoma", "melanoma"), ("Melanocytic nevus", "nevus"),
                          ("Basal cell carcinoma", "bcc"), ("Actinic keratosis", "akiec"),
                          ("Benign keratosis", "bkl"), ("Dermatofibroma", "df"), ("Vascular lesion", "vasc")]),
    "kvasir": ("endo", [("dyed lifted polyps", "dyed_lifted_polyp"), ("dyed resection margins", "dyed_resection_margin"),
                        ("esophagitis", "esophagitis"), ("normal cecum", "normal_cecum"),
                        ("normal pylorus", "normal_pylorus"), ("normal z-line", "normal_zline"),
                        ("polyps", "polyp"), ("ulcerative colitis", "ulcerative_colitis")]),
    "odir": ("fundus", [("normal", "normal_fundus"), ("diabetes", "dr"), ("glaucoma", "glaucoma"),
                        ("cataract", "cataract"), ("age related macular degeneration", "amd"),
                        ("hypertension", "hypertension"), ("pathological myopia", "myopia"),
                        ("other diseases or abnormalities", "other_fundus")]),
    "pneumonia": ("cxr", [("normal", "normal_cxr"), ("bacteria pneumonia", "bacterial_pneumonia"),
                          ("virus pneumonia", "viral_pneumonia")]),
    "pneumonia_sample": ("cxr", [("normal", "normal_cxr"), ("bacteria pneumonia", "bacterial_pneumonia")]),
    "pneumoniamnist": ("cxr", [("normal", "normal_cxr"), ("pneumonia", "pneumonia")]),
}


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def describe(entity: str, modality: str) -> List[str]:
    """All :data:`PHRASINGS` x findings sentences for ``entity`` on ``modality`` (60 strings,
    phrasing-major, so the first 50 still name all ten findings)."""
    ent, findings = ENTITIES[entity]
    a_mod = MODALITIES[modality][0]
    out = []
    for p in PHRASINGS:  # phrasing-major: any first 10 k sentences cover every finding
        for f in findings:
            out.append(p.format(A_mod=_cap(a_mod), a_mod=a_mod, Ent=_cap(ent), ent=ent, F=_cap(f), f=f))
    return out


def build_dataset_knowledge(dataset_id: str) -> dict:
    """The JSON object of ``dataset_id`` (schema: :data:`medpt.knowledge.SCHEMA`)."""
    modality, classes = DATASETS[dataset_id]
    a_mod, domain = MODALITIES[modality]
    obj = {
        "schema_version": 1,
        "dataset": dataset_id,
        "modality": a_mod.split(" ", 1)[1],
        "generator": "curated (medpt.knowledge.curated)",
        "templates": {"hand": f"a photo of a {{}}, a type of {domain}.",
                      "tcp": f"X X X X {{}}, a type of {domain}."},
        "classes": {},
    }
    for name, ent in classes:
        findings = ENTITIES[ent][1]
        obj["classes"][name] = {
            "prompt_name": ENTITIES[ent][0],
            "descriptions": describe(ent, modality),
            "vip_descriptors": [_cap(f) for f in findings[:4]],
            "clinical_concepts": list(findings[:5]),
        }
    return obj
