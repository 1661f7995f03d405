import json
qa = [
("Under the Apache License 2.0, what does the term \"License\" mean?", "\"License\" shall mean the terms and conditions for use, reproduction, and distribution as defined by Sections 1 through 9 of this document."),
("Who is the \"Licensor\" under the Apache License 2.0?", "\"Licensor\" shall mean the copyright owner or entity authorized by the copyright owner that is granting the License."),
("Who is \"You\" in the Apache License 2.0?", "\"You\" (or \"Your\") shall mean an individual or Legal Entity exercising permissions granted by this License."),
("Apart from share ownership, what power counts as \"control\" of an entity in the Apache License 2.0?", "The power, direct or indirect, to cause the direction or management of such entity, whether by contract or otherwise."),
("How does the Apache License 2.0 define the \"Work\"?", "\"Work\" shall mean the work of authorship, whether in Source or Object form, made available under the License, as indicated by a copyright notice that is included in or attached to the work."),
("Under the Apache License 2.0, what makes a work a \"Derivative Work\"?", "It is based on (or derived from) the Work and the editorial revisions, annotations, elaborations, or other modifications represent, as a whole, an original work of authorship."),
("How does the Apache License 2.0 define a \"Contribution\"?", "\"Contribution\" shall mean any work of authorship, including the original version of the Work and any modifications or additions to that Work or Derivative Works thereof, that is intentionally submitted to Licensor for inclusion in the Work."),
("What does \"submitted\" mean in the Apache License 2.0's definition of a Contribution?", "\"Submitted\" means any form of electronic, verbal, or written communication sent to the Licensor or its representatives."),
("Which communication channels does the Apache License 2.0 name as examples of submitting a Contribution?", "Communication on electronic mailing lists, source code control systems, and issue tracking systems that are managed by, or on behalf of, the Licensor."),
("Who is a \"Contributor\" under the Apache License 2.0?", "\"Contributor\" shall mean Licensor and any individual or Legal Entity on behalf of whom a Contribution has been received by Licensor and subsequently incorporated within the Work."),
("To which patent claims does the patent license of the Apache License 2.0 apply?", "Only to those patent claims licensable by such Contributor that are necessarily infringed by their Contribution(s) alone or by combination of their Contribution(s) with the Work to which such Contribution(s) was submitted."),
("What kind of lawsuit ends your patent licenses under the Apache License 2.0?", "Patent litigation against any entity (including a cross-claim or counterclaim in a lawsuit) alleging that the Work or a Contribution incorporated within the Work constitutes direct or contributory patent infringement."),
("In what forms may you redistribute copies of the Work under the Apache License 2.0?", "You may reproduce and distribute copies of the Work or Derivative Works thereof in any medium, with or without modifications, and in Source or Object form."),
("Under the Apache License 2.0, may you add your own attribution notices to a Derivative Work?", "Yes. You may add Your own attribution notices within Derivative Works that You distribute, alongside or as an addendum to the NOTICE text from the Work, provided that such additional attribution notices cannot be construed as modifying the License."),
("Does section 5 of the Apache License 2.0 override a separate license agreement you signed with the Licensor?", "No. Nothing herein shall supersede or modify the terms of any separate license agreement you may have executed with Licensor regarding such Contributions."),
("Which warranties does the Apache License 2.0 disclaim?", "Any warranties or conditions of TITLE, NON-INFRINGEMENT, MERCHANTABILITY, or FITNESS FOR A PARTICULAR PURPOSE."),
("Under which legal theories does the Apache License 2.0 exclude a Contributor's liability?", "In no event and under no legal theory, whether in tort (including negligence), contract, or otherwise, shall any Contributor be liable to You for damages."),
("Which kinds of damages are excluded by the limitation of liability in the Apache License 2.0?", "Any direct, indirect, special, incidental, or consequential damages of any character arising as a result of this License or out of the use or inability to use the Work."),
("What examples of commercial damages does the Apache License 2.0 give?", "Damages for loss of goodwill, work stoppage, computer failure or malfunction, or any and all other commercial damages or losses."),
("Does the Apache License 2.0 limit a Contributor's liability even if the Contributor was warned about possible damages?", "Yes. The limitation holds even if such Contributor has been advised of the possibility of such damages."),
("How do you apply the Apache License 2.0 to your work?", "Attach the following boilerplate notice, with the fields enclosed by brackets \"[]\" replaced with your own identifying information."),
("In what syntax should the Apache License 2.0 boilerplate notice be enclosed?", "The text should be enclosed in the appropriate comment syntax for the file format."),
("What does the Apache License 2.0 appendix recommend including on the same printed page as the copyright notice?", "A file or class name and description of purpose be included on the same \"printed page\" as the copyright notice for easier identification within third-party archives."),
("Where does the Apache License 2.0 boilerplate say you may obtain a copy of the License?", "You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0"),
]
assert len(qa)==24
with open("/work/main/examples/data/quality/apache-2.0.heldout.qa.jsonl","w") as f:
    for q,a in qa: f.write(json.dumps({"question":q,"answer":a})+"\n")
